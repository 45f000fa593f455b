"""Stratified subsets: the one definition of "the first N rows" used by training, caches and analyses.

`--limit N` and `data.train_limit=N` both mean this subset, so a target cache built with `--limit 10000` serves a
run with `data.train_limit=10000` (its rows are recorded in the cache), and a zero-shot check on a class-sorted
folder never measures a single class.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from richkd.data.arrays import ArrayDataset
from richkd.errors import RichKDError

__all__ = ["SubsetRows", "limited", "stratified_rows", "subset"]


def stratified_rows(labels: Tensor, limit: int) -> Tensor:
    """The first ceil(limit / C) rows of every class in row order, capped at `limit`: a stable, balanced subset.

    Returned in ascending row order (so a subset keeps the split's order).
    """
    if limit < 1:
        raise RichKDError(f"a subset limit must be >= 1 (got {limit})")
    n_classes = int(labels.max()) + 1
    per_class = math.ceil(limit / n_classes)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for c in range(n_classes):
        keep[(labels == c).nonzero().flatten()[:per_class]] = True
    return keep.nonzero().flatten()[:limit]


def subset(ds: ArrayDataset, limit: int | None) -> tuple[ArrayDataset, Tensor | None]:
    """(dataset, rows) where rows[i] is subset row i's row id in the full split (None = the whole split)."""
    if limit is None or limit >= len(ds):
        return ds, None
    rows = stratified_rows(ds.labels, limit)
    return dataclasses.replace(ds, images=ds.images[rows].contiguous(), labels=ds.labels[rows]), rows


@dataclasses.dataclass(frozen=True, eq=False)
class SubsetRows:
    """Which rows of a split a subset holds: recorded by target caches and prediction files."""

    limit: int
    rows: Tensor  # [n] int64 full-split row ids, ascending
    split_rows: int  # rows in the whole split

    def describe(self) -> str:
        return f"stratified subset (--limit {self.limit}) of {self.split_rows} rows"


def limited(ds: ArrayDataset, limit: int | None) -> tuple[ArrayDataset, SubsetRows | None]:
    """`subset` with its provenance: (dataset, None) when `limit` keeps the whole split."""
    if limit is not None and limit < 1:
        raise RichKDError(f"--limit must be >= 1 (got {limit})")
    part, rows = subset(ds, limit)
    if rows is None or limit is None:
        return part, None
    return part, SubsetRows(limit=limit, rows=rows, split_rows=len(ds))

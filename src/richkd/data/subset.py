"""Stratified subsets: the one definition of "the first N rows" used by training, caches and analyses.

`--limit N` and `data.train_limit=N` both mean this subset, so a target cache built with `--limit 10000` serves a
run with `data.train_limit=10000` (its rows are recorded in the cache), and a zero-shot check on a class-sorted
folder never measures a single class.

The rule (SUBSET_RULE = 2): exactly min(limit, rows) rows; every class gets floor(limit / C) of its first rows in
row order; a class with fewer rows gives all it has and its shortfall goes to the others (water-filling); the
limit % C rows left over go, one each, to the classes with rows to spare, lowest class id first. So per-class
counts differ by at most one except for exhausted classes, and a multiple of C picks the same rows as rule 1.

Rule 1 (before issue 27; ceil(limit / C) per class, the union cut in row order) dropped whole classes
from class-sorted folders. It is kept only as `legacy_stratified_rows`, to recognise caches, prediction files and
run directories that recorded rule-1 rows and refuse them where the two rules pick different rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import torch
from torch import Tensor

from richkd.data.arrays import ArrayDataset
from richkd.errors import RichKDError

__all__ = [
    "LEGACY_SUBSET_RULE",
    "SUBSET_RULE",
    "SubsetRows",
    "check_recorded_subset",
    "class_quotas",
    "legacy_file_rows_agree",
    "legacy_stratified_rows",
    "limited",
    "old_rule_note",
    "rows_sha256",
    "stratified_rows",
    "subset",
]

SUBSET_RULE = 2  # recorded by every cache, prediction file and run that holds a subset
LEGACY_SUBSET_RULE = 1  # what an artefact without a recorded rule was built with


def rows_sha256(rows: Tensor) -> str:
    """Fingerprint of a set of row ids (int64, in order): pins which rows a subset holds."""
    return hashlib.sha256(rows.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise RichKDError(f"a subset limit must be >= 1 (got {limit})")


def class_quotas(sizes: Tensor, limit: int) -> Tensor:
    """[C] int64 rows taken from each class, given its `sizes` [C] in the split (the rule in the module docstring).

    Water-filling: the largest level q with sum(min(size, q)) <= limit, then the remainder one each to the classes
    with more than q rows, lowest class id first.
    """
    _check_limit(limit)
    sizes = sizes.to(torch.int64)
    total = int(sizes.sum())
    if limit >= total:
        return sizes.clone()
    lo, hi = 0, int(sizes.max())  # sum(min(sizes, lo)) <= limit < sum(min(sizes, hi)) since limit < total
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(sizes.clamp(max=mid).sum()) <= limit:
            lo = mid
        else:
            hi = mid
    quota = sizes.clamp(max=lo)
    left = limit - int(quota.sum())  # fewer than the classes with spare rows, else lo + 1 would fit
    spare = (sizes > lo).nonzero().flatten()
    quota[spare[:left]] += 1
    return quota


def stratified_rows(labels: Tensor, limit: int) -> Tensor:
    """Full-split row ids of the stratified subset of `limit` rows (rule SUBSET_RULE), ascending."""
    _check_limit(limit)
    labels = labels.cpu().to(torch.int64)
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    sizes = torch.bincount(labels)
    quota = class_quotas(sizes, limit)
    order = torch.argsort(labels, stable=True)  # rows grouped by class, row order kept within a class
    starts = torch.cumsum(sizes, 0) - sizes
    sorted_labels = labels[order]
    rank = torch.arange(len(labels)) - starts[sorted_labels]  # position of each row within its class
    return order[rank < quota[sorted_labels]].sort().values


def legacy_stratified_rows(labels: Tensor, limit: int) -> Tensor:
    """Rule 1, for recognising old artefacts only: ceil(limit / C) first rows per class, the union cut at `limit`."""
    _check_limit(limit)
    n_classes = int(labels.max()) + 1
    per_class = math.ceil(limit / n_classes)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for c in range(n_classes):
        keep[(labels == c).nonzero().flatten()[:per_class]] = True
    return keep.nonzero().flatten()[:limit]


def old_rule_note(labels: Tensor, limit: int, recorded_sha256: str | None) -> str:
    """" (built under subset rule 1, ...)" when `recorded_sha256` pins rule 1's rows, else ""."""
    if recorded_sha256 is not None and rows_sha256(legacy_stratified_rows(labels, limit)) == recorded_sha256:
        return (f" (it was built under the old subset rule 1, which picks other rows for --limit {limit} than "
                f"today's rule {SUBSET_RULE})")
    return ""


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
    rule: int = SUBSET_RULE

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


def check_recorded_subset(
    where: str, what: str, labels: Tensor, limit: int | None, *, rule: int | None, sha256: str | None
) -> None:
    """Refuse, in one line, an artefact (e.g. a run directory) whose recorded subset rows are not the rows today's
    rule picks from the split `labels` with `limit` (`what` names the setting, e.g. "data.train_limit").

    `rule` None: the artefact predates the record, so its rows were rule 1's; they are recomputed and accepted
    where they coincide with today's (e.g. any multiple of C with no short class). Otherwise `sha256` pins them.
    """
    if limit is None or limit >= len(labels):
        return
    rows = stratified_rows(labels, limit)
    if rule is None:
        if torch.equal(legacy_stratified_rows(labels, limit), rows):
            return
        why = (f"it was made under the old subset rule {LEGACY_SUBSET_RULE}, which picks other rows for "
               f"{what}={limit} than today's rule {SUBSET_RULE}")
    elif rows_sha256(rows) == sha256:
        return
    else:
        why = f"its {what}={limit} rows differ from the split's today (were the images or labels changed?)"
    raise RichKDError(f"{where}: {why}; start afresh in another directory rather than mixing two subsets")


def legacy_file_rows_agree(labels: Tensor, n_classes: int, limit: int) -> bool:
    """Whether a file that recorded a rule-1 subset of `limit` rows (`labels`: the labels of its rows) holds
    exactly the rows today's rule picks, knowing only its own rows.

    Both rules take a prefix of each class in row order, so the sets agree iff the per-class counts do; counts
    equal to today's quota for unbounded classes also prove no class was short (a short class gives fewer)."""
    unbounded = torch.full((n_classes,), limit, dtype=torch.int64)  # every class could give all of `limit`
    counts = torch.bincount(labels.cpu().to(torch.int64), minlength=n_classes)
    return len(labels) == limit and torch.equal(counts, class_quotas(unbounded, limit))

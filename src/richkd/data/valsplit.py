"""A held-out validation split of the training rows (`data.val_split`), so the best epoch is not chosen on test.

The reference protocol reports the best test accuracy over epochs, which selects on the test set. With
`data.val_split=f` a seeded, stratified fraction f of the (possibly `data.train_limit`-reduced) training rows is
never trained on; it is evaluated each epoch and picks the best epoch instead. The split is a pure function of
(labels, fraction, seed), so `--resume` rebuilds the same rows, and its full-split row ids are recorded (with their
sha256) in run.json. Training rows keep their original row ids for target-cache, teacher-cache and memory-bank
lookups: `ValSplit.train_ids` are full-split ids, the ones those caches are keyed by.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import torch
from torch import Tensor

from richkd.data.arrays import ArrayDataset
from richkd.errors import RichKDError

__all__ = ["ValSplit", "held_out_counts", "split_validation", "val_split_rows"]


def held_out_counts(class_sizes: list[int], fraction: float) -> list[int]:
    """Rows held out per class: round-half-up(fraction * n_c), at most n_c - 1 so every class still trains."""
    if not 0.0 < fraction < 1.0:
        raise RichKDError(f"data.val_split must be a fraction in (0, 1) (got {fraction})")
    return [min(max(n - 1, 0), math.floor(fraction * n + 0.5)) for n in class_sizes]


def val_split_rows(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train positions, validation positions) into `labels`, each ascending and disjoint, covering every row.

    Stratified: class c gives `held_out_counts` of its rows, drawn by a permutation seeded with `seed` (one
    generator, classes in label order), so the same (labels, fraction, seed) always gives the same split.
    """
    labels = labels.cpu()
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    members = [(labels == c).nonzero().flatten() for c in range(n_classes)]
    counts = held_out_counts([len(m) for m in members], fraction)
    if sum(counts) == 0:
        raise RichKDError(
            f"data.val_split={fraction} holds out no row of {len(labels)} training rows (at most n-1 of each "
            "class, rounded): raise data.val_split or data.train_limit"
        )
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for rows, k in zip(members, counts, strict=True):
        order = torch.randperm(len(rows), generator=generator)
        held[rows[order[:k]]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def rows_sha256(rows: Tensor) -> str:
    """sha256 of int64 row ids in order (the same fingerprint target caches use for their rows)."""
    return hashlib.sha256(rows.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class ValSplit:
    """The validation split of one run: which full-split rows train and which validate."""

    fraction: float
    seed: int
    train_ids: Tensor  # [n_train] int64 full-split row ids trained on, ascending
    val_ids: Tensor  # [n_val] int64 full-split row ids held out, ascending
    train_labels: Tensor  # [n_train]
    val_labels: Tensor  # [n_val]
    n_classes: int

    def record(self) -> dict[str, Any]:
        """What run.json keeps: enough to rebuild and to check the split (rows, their sha256, per-class counts)."""
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "rule": "per class round-half-up(fraction * n_c), at most n_c - 1, drawn by torch.randperm seeded with "
            "seed (classes in label order), from the data.train_limit subset when one is set",
            "n_train": len(self.train_ids),
            "n_val": len(self.val_ids),
            "val_rows": [int(r) for r in self.val_ids],
            "val_rows_sha256": rows_sha256(self.val_ids),
            "train_rows_sha256": rows_sha256(self.train_ids),
            "val_per_class": torch.bincount(self.val_labels, minlength=self.n_classes).tolist(),
            "train_per_class": torch.bincount(self.train_labels, minlength=self.n_classes).tolist(),
        }


def split_validation(
    train: ArrayDataset, row_ids: Tensor | None, fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset, ValSplit]:
    """(rows trained on, held-out rows, the split) of `train`, whose row i is full-split row `row_ids[i]`
    (None: row i itself, `train` is the whole split). Apply `data.train_limit` first, then this."""
    keep, held = val_split_rows(train.labels, fraction, seed)
    ids = row_ids.cpu() if row_ids is not None else torch.arange(len(train))

    def part(rows: Tensor) -> ArrayDataset:
        return dataclasses.replace(train, images=train.images[rows].contiguous(), labels=train.labels[rows])

    fit_part, val_part = part(keep), part(held)
    split = ValSplit(
        fraction=fraction, seed=seed, train_ids=ids[keep], val_ids=ids[held],
        train_labels=fit_part.labels, val_labels=val_part.labels, n_classes=train.num_classes,
    )
    return fit_part, val_part, split

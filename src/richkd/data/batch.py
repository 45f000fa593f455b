"""A training/eval batch. `indices` are dataset row ids and are always present (CRD and caches need them)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    images: Tensor  # [B, 3, H, W] float, normalised, on the compute device
    labels: Tensor  # [B] int64
    indices: Tensor  # [B] int64 dataset row ids
    views: Tensor  # [B] int64 target-cache view id served for each sample (0 = plain view)
    strong: Batch | None = None  # MLKD: the same rows' strongly augmented view (its views: the plain view id)

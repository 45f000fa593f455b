"""ArrayDataset: a whole split as one uint8 tensor, so it can live on the device (airbench style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """One split of a dataset held in memory.

    Row i of `images`/`labels` is dataset row id i: stable across runs and machines (official file order for
    CIFAR/Fashion-MNIST, sorted relative path for image folders), because target caches and CRD memory banks
    are keyed by it. `mean`/`std` are the normalisation stats to train with (the train split's, also on test).
    `eq=False`: comparing tensors field-wise is ambiguous, so identity equality is kept.
    """

    images: torch.Tensor  # [N, 3, H, W] uint8, CPU, contiguous
    labels: torch.Tensor  # [N] int64
    classes: tuple[str, ...]  # class names in label-index order (prompts are built from them)
    name: str
    split: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # the file or folder the split came from

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if not images.is_contiguous():
            raise ValueError("images must be contiguous")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be int64 [N], got {labels.dtype} {tuple(labels.shape)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per channel")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

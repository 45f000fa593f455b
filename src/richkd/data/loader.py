"""Feeding batches without a DataLoader: row-id batches per epoch, and the dataset resident on the device.

`reference_loader` is the slow per-sample torch DataLoader pipeline, kept only so benchmarks can show what
the batched path saves; training never uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from richkd.data.arrays import ArrayDataset
from richkd.engine.proc import die_with_parent


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    generator: torch.Generator | None,
    rank: int = 0,
    world_size: int = 1,
) -> list[Tensor]:
    """Row ids (int64, CPU) of each batch of one epoch, for this rank.

    The permutation is drawn once for the whole job from `generator` (a CPU generator seeded identically on
    every rank) and cut into global batches of `batch_size`; rank r takes the r-th of `world_size` equal
    contiguous slices of each global batch. So the union over ranks of step k is exactly step k of a
    1-process run with the same seed, and ranks never share a row. With world_size > 1, batch_size must be
    divisible by world_size, and a final partial batch is trimmed to a multiple of world_size (at most
    world_size - 1 rows skipped for that epoch) so all ranks run the same number of equal steps.
    """
    if n < 0 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad epoch_batches arguments: n={n} batch_size={batch_size} rank={rank}/{world_size}")
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches: list[Tensor] = []
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        if len(rows) < batch_size and (drop_last or len(rows) < world_size):
            break
        per_rank = len(rows) // world_size
        batches.append(rows[rank * per_rank : (rank + 1) * per_rank].clone())
    return batches


class DeviceData:
    """A split's uint8 images and labels copied to `device` once; batches are then index_select calls.

    uint8 keeps CIFAR-100's 50k training images at 150 MB, so they fit on any GPU next to the model.
    """

    def __init__(self, ds: ArrayDataset, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.images = ds.images.to(self.device)  # [N, 3, H, W] uint8
        self.labels = ds.labels.to(self.device)  # [N] int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def gather(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(uint8 [B, 3, H, W], int64 [B]) for dataset row ids `rows` (any device)."""
        rows = rows.to(self.device, non_blocking=True)
        return self.images.index_select(0, rows), self.labels.index_select(0, rows)


class _PerSampleDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """torchvision-style per-item RandomCrop(pad) + RandomHorizontalFlip + Normalize, in plain torch."""

    def __init__(self, ds: ArrayDataset, pad: int) -> None:
        self.images, self.labels, self.pad = ds.images, ds.labels, pad
        self.mean = torch.tensor(ds.mean).view(3, 1, 1)
        self.std = torch.tensor(ds.std).view(3, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        image = self.images[i].float().div(255.0)
        h, w = image.shape[1:]
        padded = torch.nn.functional.pad(image, (self.pad,) * 4)
        y, x = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
        image = padded[:, y : y + h, x : x + w]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return (image - self.mean) / self.std, self.labels[i], i


def reference_loader(
    ds: ArrayDataset, batch_size: int, *, num_workers: int = 2, pad: int = 4
) -> DataLoader[tuple[Tensor, Tensor, int]]:
    """SLOW REFERENCE, benchmarks only: the per-sample DataLoader pipeline mdistiller/CRD use (minus PIL and
    torchvision), yielding (images float [B, 3, H, W], labels [B], indices [B]). Train with DeviceData +
    epoch_batches + augment instead."""
    return DataLoader(
        _PerSampleDataset(ds, pad),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init,
    )


def _worker_init(worker_id: int) -> None:
    die_with_parent()  # no orphaned workers when the training process is SIGKILLed

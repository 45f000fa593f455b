"""Turn row ids into a training Batch on the compute device: gather uint8 rows, crop/flip and normalise
batched (airbench style, no per-sample Python), and choose the target-cache view each sample is served."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from richkd.data.augment import CropFlip, apply_crop_flip, normalize, sample_crop_flip
from richkd.data.batch import Batch
from richkd.data.loader import DeviceData

AugLookup = Callable[[Tensor, Tensor], CropFlip]  # (cache rows, views) -> the crop/flip of that cached view


@dataclass
class BatchMaker:
    data: DeviceData
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: bool
    pad: int
    channels_last: bool
    n_views: int = 1  # >1: serve a random cached view per sample and give the student that view's crop/flip
    view_aug: AugLookup | None = None
    row_map: Tensor | None = None  # subset row -> cache row

    def __call__(self, rows: Tensor, generator: torch.Generator | None) -> Batch:
        device = self.data.images.device
        rows = rows.to(device)
        images, labels = self.data.gather(rows)  # uint8 [B, 3, H, W], int64 [B]
        views = torch.zeros_like(rows)
        if self.augment:
            if self.n_views > 1 and self.view_aug is not None:
                views = torch.randint(0, self.n_views, (rows.numel(),), generator=generator, device="cpu").to(
                    device
                )
                cache_rows = rows if self.row_map is None else self.row_map[rows]
                params = self.view_aug(cache_rows, views)
            else:
                params = sample_crop_flip(rows.numel(), pad=self.pad, generator=generator, device=device)
            images = apply_crop_flip(images, params, pad=self.pad)
        x = normalize(images, self.mean, self.std, channels_last=self.channels_last)
        return Batch(images=x, labels=labels, indices=rows, views=views)

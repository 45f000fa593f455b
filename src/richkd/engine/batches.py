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
from richkd.data.views import plain_view_id, view_ids

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
    exact_views: bool = False  # views = exact view id (richkd.data.views) of each drawn crop/flip: served by a
    # teacher cache or a `vlm cache --views all` cache; the random draws are the same as without it

    def __post_init__(self) -> None:
        if self.exact_views and self.n_views > 1:
            raise ValueError("exact_views serves the drawn crop/flip; it cannot be combined with random cached views")

    def __call__(
        self, rows: Tensor, generator: torch.Generator | None, *, rank: int = 0, world_size: int = 1
    ) -> Batch:
        """The batch of `rows`: this rank's slice of a global batch of `world_size` equal slices.

        Per-sample random draws are made for the whole global batch and sliced to this rank's rows, so
        every rank's generator stays in step with a 1-process run's and each row gets the same crop/flip.
        """
        device = self.data.images.device
        n = rows.numel()
        mine = slice(rank * n, (rank + 1) * n)
        view_aug = self.view_aug if self.augment and self.n_views > 1 else None
        host = [rows.cpu().long()]  # row ids, then the draws: one host->device copy per batch
        if view_aug is not None:
            host.append(torch.randint(0, self.n_views, (n * world_size,), generator=generator)[mine])
        elif self.augment:
            drawn = sample_crop_flip(n * world_size, pad=self.pad, generator=generator, device="cpu")
            host += [drawn.dx[mine], drawn.dy[mine], drawn.flip[mine].long()]
        moved = _to_device(torch.stack(host), device)  # [1 + draws, B] int64
        rows = moved[0]
        images, labels = self.data.gather(rows)  # uint8 [B, 3, H, W], int64 [B]
        views = torch.zeros_like(rows)
        if self.exact_views:
            views = torch.full_like(rows, plain_view_id(self.pad))
        if self.augment:
            if view_aug is not None:
                views = moved[1]
                cache_rows = rows if self.row_map is None else self.row_map[rows]
                params = view_aug(cache_rows, views)
            else:
                params = CropFlip(moved[1], moved[2], moved[3].bool())
                if self.exact_views:
                    views = view_ids(params, self.pad)
            images = apply_crop_flip(images, params, pad=self.pad)
        x = normalize(images, self.mean, self.std, channels_last=self.channels_last)
        return Batch(images=x, labels=labels, indices=rows, views=views)


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    """Copy a small host tensor to `device` without stalling the host on CUDA: from pinned memory with
    non_blocking (a plain copy from pageable memory waits for the GPU to drain its queue, every step)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)

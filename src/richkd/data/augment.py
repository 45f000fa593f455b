"""Batched augmentation on uint8/float tensors: random crop with zero padding, horizontal flip, normalise.

Everything is a handful of tensor ops per batch (airbench style), so it runs wherever the data lives and
costs ~1 ms per 256 CIFAR images on one CPU core. Crop/flip parameters are drawn separately from their
application so a target cache can store them per (row, view) and give the student the very same crop.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from richkd.data.stats import DATASET_STATS

__all__ = ["DATASET_STATS", "CropFlip", "apply_crop_flip", "identity_crop_flip", "normalize", "sample_crop_flip"]


class CropFlip(NamedTuple):
    """Per-sample augmentation: crop origin (dx, dy) in the padded image, then an optional horizontal flip."""

    dx: Tensor  # [n] int64 in [0, 2*pad]; pad means "no shift"
    dy: Tensor  # [n] int64 in [0, 2*pad]
    flip: Tensor  # [n] bool


def sample_crop_flip(
    n: int, *, pad: int = 4, generator: torch.Generator | None, device: torch.device | str
) -> CropFlip:
    """Draw n crops and flips (each flip with p=0.5).

    Draws happen on the generator's device (CPU when none is given) and are then moved to `device`, so one
    seeded CPU generator gives the same augmentation stream on any device.
    """
    source = generator.device if generator is not None else torch.device("cpu")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=source)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=source)
    flip = torch.randint(0, 2, (n,), generator=generator, device=source).bool()
    return CropFlip(dx.to(device), dy.to(device), flip.to(device))


def identity_crop_flip(n: int, *, pad: int = 4, device: torch.device | str = "cpu") -> CropFlip:
    """Parameters that leave images unchanged (the un-augmented view 0)."""
    shift = torch.full((n,), pad, dtype=torch.int64, device=device)
    return CropFlip(shift, shift.clone(), torch.zeros(n, dtype=torch.bool, device=device))


def apply_crop_flip(images: Tensor, params: CropFlip, pad: int = 4) -> Tensor:
    """Zero-pad by `pad`, crop HxW at (dy, dx), flip where `flip`; same dtype and device as `images`.

    One gather over the flattened padded images: output pixel (y, x) of sample b reads padded pixel
    (dy[b] + y, dx[b] + x'), with x' = W-1-x when flipped, so no per-sample Python runs.
    """
    b, c, h, w = images.shape
    if params.dx.shape != (b,) or params.dy.shape != (b,) or params.flip.shape != (b,):
        raise ValueError(f"crop/flip parameters must have shape [{b}]")
    if b == 0:
        return images.clone()
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    device = images.device
    dx, dy = params.dx.to(device, torch.int64), params.dy.to(device, torch.int64)  # callers may store int16
    flip = params.flip.to(device, torch.bool)
    xs = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], xs.flip(0), xs) + dx[:, None]  # [B, W]
    rows = torch.arange(h, device=device) + dy[:, None]  # [B, H]
    index = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # [B, H, W] into the flattened padded image
    out = padded.reshape(b, c, -1).gather(2, index.reshape(b, 1, h * w).expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def normalize(
    images_uint8: Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Tensor:
    """(x/255 - mean)/std as one fused multiply-add in float32, then cast to `dtype` (bf16 stays accurate)."""
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    scale, shift = _affine(tuple(mean), tuple(std), images_uint8.device)
    x = torch.addcmul(shift, images_uint8.float(), scale).to(dtype)  # x*scale + shift
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@lru_cache(maxsize=32)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """[1, C, 1, 1] scale = 1/(255 std) and shift = -mean/std, built once per device (no copy per batch)."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device).view(1, -1, 1, 1)
    return scale, shift

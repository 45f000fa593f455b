"""Batched augmentation on uint8/float tensors: random crop with zero padding, horizontal flip, normalise.

Everything is a handful of tensor ops per batch (airbench style), so it runs wherever the data lives and
costs ~1 ms per 256 CIFAR images on one CPU core. Crop/flip parameters are drawn separately from their
application so a target cache can store them per (row, view) and give the student the very same crop.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from richkd.data.stats import DATASET_STATS

__all__ = [
    "DATASET_STATS",
    "RAND_AUGMENT_OPS",
    "CropFlip",
    "StrongAugment",
    "apply_crop_flip",
    "apply_strong_augment",
    "identity_crop_flip",
    "normalize",
    "sample_crop_flip",
    "sample_strong_augment",
]


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


# --------------------------------------------------------------------------- MLKD's strong view
# RandAugment(n=2) + Cutout as MLKD's reference data pipeline (mdistiller/dataset/cifar100.py in the
# logit-standardisation KD repository, from FixMatch): after its own crop/flip, each image gets two ops drawn
# uniformly from this list, each with a magnitude drawn uniformly from the op's range, then a Cutout square of
# side u·W/2 (u uniform) filled with (125, 123, 114). Same ops, ranges and order; here as batched tensor ops
# (float32 on 0..255, rounded to uint8 after each op like a PIL image) instead of per-image PIL calls, so the
# pixels are close to but not bit-identical with PIL's.
RAND_AUGMENT_OPS: tuple[tuple[str, float, float], ...] = (
    ("auto_contrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),
    ("rotate", -30.0, 30.0),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
)
_OP_INDEX = {name: i for i, (name, _, _) in enumerate(RAND_AUGMENT_OPS)}
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
CUTOUT_FILL = (125.0, 123.0, 114.0)
RAND_AUGMENT_N = 2


class StrongAugment(NamedTuple):
    """Per-sample draws of MLKD's strong view: its crop/flip, RandAugment ops and values, Cutout box."""

    crop: CropFlip
    ops: Tensor  # [n, 2] int64 index into RAND_AUGMENT_OPS
    values: Tensor  # [n, 2] float32 magnitude, in the op's range
    cutout: Tensor  # [n, 3] float32: side as a fraction of the width (u/2), centre x and y as fractions


def sample_strong_augment(n: int, *, pad: int = 4, generator: torch.Generator | None) -> StrongAugment:
    """Draw n strong-view augmentations on the CPU (from ``generator``: the same seed gives the same draws)."""
    crop = sample_crop_flip(n, pad=pad, generator=generator, device="cpu")
    ops = torch.randint(0, len(RAND_AUGMENT_OPS), (n, RAND_AUGMENT_N), generator=generator)
    low = torch.tensor([lo for _, lo, _ in RAND_AUGMENT_OPS])
    high = torch.tensor([hi for _, _, hi in RAND_AUGMENT_OPS])
    u = torch.rand((n, RAND_AUGMENT_N), generator=generator)
    values = low[ops] + (high[ops] - low[ops]) * u
    cutout = torch.rand((n, 3), generator=generator) * torch.tensor([0.5, 1.0, 1.0])
    return StrongAugment(crop, ops, values, cutout)


def apply_strong_augment(images: Tensor, params: StrongAugment, pad: int = 4) -> Tensor:
    """uint8 ``[B, 3, H, W]`` -> its strong view (uint8, same device): crop/flip, two RandAugment ops, Cutout.

    Per op a handful of tensor ops on the rows that drew it (rows grouped by op with a host-side sort of the
    CPU draws, so no device sync): no per-sample Python.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 [B, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
    x = apply_crop_flip(images, params.crop, pad=pad).float()
    for k in range(params.ops.shape[1]):
        x = _rand_augment_round(x, params.ops[:, k].cpu(), params.values[:, k].cpu())
    x = _cutout(x, params.cutout.to(x.device))
    return x.to(torch.uint8)


def _rand_augment_round(x: Tensor, ops: Tensor, values: Tensor) -> Tensor:
    """One RandAugment op per row: geometric ops as one nearest-neighbour affine gather over the batch (identity
    for the other rows), then each colour op on its rows (a contiguous slice after sorting by op)."""
    x = _affine_nearest(x, _inverse_affines(ops, values, x.shape[2], x.shape[3]).to(x.device))
    order = torch.argsort(ops, stable=True)
    counts = torch.bincount(ops, minlength=len(RAND_AUGMENT_OPS)).tolist()
    device_order = order.to(x.device)
    sorted_x, sorted_v = x[device_order], values[order].to(x.device)
    parts, start = [], 0
    for (name, _, _), count in zip(RAND_AUGMENT_OPS, counts, strict=True):
        if count:
            chunk = sorted_x[start:start + count]
            fn = _COLOUR_OPS.get(name)
            parts.append(chunk if fn is None else fn(chunk, sorted_v[start:start + count]).round().clamp(0, 255))
        start += count
    out = torch.empty_like(x)
    out[device_order] = torch.cat(parts)
    return out


def _inverse_affines(ops: Tensor, values: Tensor, h: int, w: int) -> Tensor:
    """``[B, 2, 3]`` output-pixel -> input-pixel maps in PIL's conventions (``Image.transform`` AFFINE data and
    ``Image.rotate``, counter-clockwise by the value in degrees about the centre); identity for non-geometric ops."""
    n = ops.shape[0]
    m = torch.zeros(n, 2, 3, dtype=torch.float64)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    v = values.double()
    shear_x, shear_y = ops == _OP_INDEX["shear_x"], ops == _OP_INDEX["shear_y"]
    m[shear_x, 0, 1] = v[shear_x]  # x_in = x + v·y
    m[shear_y, 1, 0] = v[shear_y]  # y_in = v·x + y
    tx, ty = ops == _OP_INDEX["translate_x"], ops == _OP_INDEX["translate_y"]
    m[tx, 0, 2] = v[tx] * w  # x_in = x + v·W
    m[ty, 1, 2] = v[ty] * h
    rot = ops == _OP_INDEX["rotate"]
    a = -torch.deg2rad(v[rot])
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = w / 2.0, h / 2.0
    m[rot, 0, 0], m[rot, 0, 1], m[rot, 1, 0], m[rot, 1, 1] = cos, sin, -sin, cos
    m[rot, 0, 2] = cx - cos * cx - sin * cy
    m[rot, 1, 2] = cy + sin * cx - cos * cy
    return m.float()


def _affine_nearest(x: Tensor, inverse: Tensor) -> Tensor:
    """Sample ``x`` at ``inverse @ (x + ½, y + ½, 1)`` (nearest pixel; outside the image -> 0, PIL's fill)."""
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=torch.float32) + 0.5,
        torch.arange(w, device=x.device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    grid = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, device=x.device)])  # [3, HW]
    src = inverse @ grid  # [B, 2, HW]
    sx, sy = torch.floor(src[:, 0]).long(), torch.floor(src[:, 1]).long()
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)  # [B, HW]
    index = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).unsqueeze(1).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index) * inside.unsqueeze(1)
    return out.reshape(b, c, h, w)


def _grey(x: Tensor) -> Tensor:
    """PIL's ``convert("L")``: ``0.299 R + 0.587 G + 0.114 B``, rounded, as ``[n, 1, H, W]``."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).round()


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance``: ``degenerate + factor · (x − degenerate)``."""
    return degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)


def _auto_contrast(x: Tensor, v: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (high - low).clamp_min(1.0)
    return torch.where(high > low, (x - low) * scale, x)


def _equalize(x: Tensor, v: Tensor) -> Tensor:
    """Per-channel histogram equalisation with PIL's lookup table: step = (N − count of the last occupied level)
    // 255, lut[i] = (Σ_{j<i} h_j + step // 2) // step, identity where step is 0."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = 255 - torch.argmax((hist.flip(1) > 0).long(), dim=1)  # highest occupied level
    step = (h * w - hist.gather(1, last[:, None])) // 255  # [nc, 1]
    before = torch.cumsum(hist, dim=1) - hist
    lut = torch.div(before + step // 2, step.clamp_min(1), rounding_mode="floor").clamp(max=255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.reshape(n, c, h, w).float()


def _posterize(x: Tensor, v: Tensor) -> Tensor:
    bits = v.long().clamp(1, 8).view(-1, 1, 1, 1)
    mask = (255 << (8 - bits)) & 255
    return (x.long() & mask).float()


def _sharpness(x: Tensor, v: Tensor) -> Tensor:
    """PIL's SMOOTH filter ``[[1,1,1],[1,5,1],[1,1,1]] / 13`` inside, the border pixels kept, blended with x."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
    c = x.shape[1]
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c).round()
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, v)


_COLOUR_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "auto_contrast": _auto_contrast,
    "brightness": lambda x, v: _blend(torch.zeros_like(x), x, v),
    "color": lambda x, v: _blend(_grey(x).expand_as(x), x, v),
    "contrast": lambda x, v: _blend(_grey(x).mean(dim=(1, 2, 3), keepdim=True).add(0.5).floor().expand_as(x), x, v),
    "equalize": _equalize,
    "posterize": _posterize,
    "sharpness": _sharpness,
    "solarize": lambda x, v: torch.where(x < v.view(-1, 1, 1, 1), x, 255.0 - x),
}


def _cutout(x: Tensor, cutout: Tensor) -> Tensor:
    """Fill the box ``[x0, x0 + s] × [y0, y0 + s]`` (inclusive, clipped; s = side·W, x0 = max(0, int(cx·W − s/2)))
    with CUTOUT_FILL; a side of 0 leaves the image unchanged (the reference's ``v <= 0``)."""
    b, _, h, w = x.shape
    side = cutout[:, 0] * w
    x0 = (cutout[:, 1] * w - side / 2).clamp_min(0).floor()
    y0 = (cutout[:, 2] * h - side / 2).clamp_min(0).floor()
    x1, y1 = (x0 + side).clamp(max=w), (y0 + side).clamp(max=h)
    cols = torch.arange(w, device=x.device, dtype=x.dtype)
    rows = torch.arange(h, device=x.device, dtype=x.dtype)
    in_x = (cols >= x0[:, None]) & (cols <= x1[:, None]) & (side[:, None] > 0)  # [B, W]
    in_y = (rows >= y0[:, None]) & (rows <= y1[:, None])  # [B, H]
    box = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)  # [B, 1, H, W]
    fill = torch.tensor(CUTOUT_FILL, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.where(box, fill, x)

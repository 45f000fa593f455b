"""Image preprocessing and weight fingerprints shared by every vision-language backend.

Its own module so the backends (surrogate, clip_hf, clip_openclip, random_vlm) and `vlm.py`, which loads them,
do not import each other in a circle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.errors import RichKDError

__all__ = ["CLIP_MEAN", "CLIP_STD", "PREPROCESS_VERSION", "ImageSpec", "fingerprint_module", "preprocess_images"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# Bump when preprocess_images changes its output: it enters every backend's fingerprint, so caches built with
# other preprocessing are told apart. v2: antialiased (PIL-style, a = -0.5) kernels also when upsampling.
PREPROCESS_VERSION = "preprocess-v2"


@dataclass(frozen=True)
class ImageSpec:
    """Input recipe of an image tower: resize the short side to `size`, center-crop `size`, normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise RichKDError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")


def preprocess_images(images: Tensor, spec: ImageSpec, *, channels_last: bool = False) -> Tensor:
    """[B, 3, h, w] float in [0, 1] -> [B, 3, size, size] normalised for the tower (resize, center-crop).

    `channels_last` returns that memory format, written by the normalisation itself rather than by a copy
    afterwards; the values are the same either way.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = spec.size / min(h, w)
    new_h, new_w = max(spec.size, round(h * scale)), max(spec.size, round(w * scale))
    x = images.float()
    if (new_h, new_w) != (h, w):
        if spec.interpolation == "nearest":
            x = F.interpolate(x, size=(new_h, new_w), mode="nearest")
        else:
            # antialias=True selects PIL's kernels (bicubic a = -0.5), which CLIP was trained with, for up- and
            # downsampling alike: 32 -> 224 px differs from PIL by 0.2 grey levels on average, against 3.9 for
            # torch's plain bicubic (a = -0.75)
            x = F.interpolate(x, size=(new_h, new_w), mode=spec.interpolation, align_corners=False, antialias=True)
        # bicubic overshoots; PIL clips to the uint8 range. In place: x is interpolate's own output here
        x = x.clamp_(0.0, 1.0)
    top, left = (new_h - spec.size) // 2, (new_w - spec.size) // 2
    x = x[:, :, top : top + spec.size, left : left + spec.size]
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    out = torch.empty_like(x, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return torch.sub(x, mean, out=out).div_(std)  # (x - mean) / std, one new tensor instead of two


def fingerprint_module(*modules: nn.Module, extra: Sequence[str] = ()) -> str:
    """sha256 over the state-dict tensors (name, dtype, shape, bytes) of `modules`, plus `extra` strings
    (callers pass their model id and image spec) and PREPROCESS_VERSION."""
    h = hashlib.sha256(PREPROCESS_VERSION.encode())
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for s in extra:
        h.update(s.encode())
    return h.hexdigest()

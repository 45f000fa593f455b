"""The 19 CIFAR-C corruptions x 5 severities (Hendrycks & Dietterich, ICLR 2019) on uint8 image batches.

`corrupt(images, name, severity, seed=...)` applies one corruption with the CIFAR-10-C / CIFAR-100-C constants
of the authors' `make_cifar_c.py` (not the ImageNet-C ones, which are tuned for 224 px and would destroy a
32 px image). The algorithms follow that script, re-implemented batched in numpy/scipy/torch/Pillow, without
OpenCV, scikit-image or ImageMagick. This is NOT bit-exact CIFAR-C: use `richkd.robustness.official` to
evaluate on the published .npy files. Where and why it differs from the original:

- Randomness: one Philox stream per image keyed by (seed, corruption, row id), not numpy's global state, so
  results do not depend on batch splitting or order. The key leaves out the severity: the five severities of
  one image share their random draws (noise pattern, angle, crop), so only the constants change with severity.
- motion_blur, snow: the reference calls ImageMagick's MotionBlurImage through Wand; here the same one-sided
  Gaussian line kernel (2*ceil(radius)+1 taps, offsets rounded as ImageMagick does, edge pixels repeated) is
  applied in numpy, with 8-bit rounding where ImageMagick writes 8-bit PNGs. Not compared with ImageMagick.
- frost: the reference blends crops of five photos of frost (frost1..frost5 resized by 0.2). No photo is
  shipped; five procedural textures (anti-aliased ice needles with side branches over fractal haze) are
  scaled to the per-channel mean and spread measured on those photos. Same blend constants; different look.
- spatter: OpenCV's Canny, 5x5 chamfer distance transform, equalizeHist, filter2D and blur are re-implemented
  (see `_spatter`); the reference's uint8 wrap-around of liquid values above 1.0 saturates here, and an image
  whose liquid map is empty gets no drops instead of NaN.
- elastic_transform: warpAffine/map_coordinates become exact float bilinear sampling (OpenCV rounds
  coordinates to 1/32 px); the constants are fractions of the image side (identical at 32 px).
- defocus_blur, gaussian_blur, zoom_blur, fog, glass_blur, noises, brightness, contrast, saturate: same
  algorithm and borders as the reference (scipy in place of cv2.filter2D/skimage), float64 throughout.
  glass_blur keeps the reference's quirks (offsets in [-d, d); its "swap" duplicates the neighbour).
- pixelate and jpeg_compression use Pillow image by image exactly as the reference (JPEG bytes depend on the
  libjpeg build).
- Output is quantised by truncation like the reference's np.uint8 cast, with a 1e-6 guard so an unchanged
  value is not lost to floating-point error (the reference can turn an unchanged 37 into 36).

`corrupt_with_params` runs one algorithm with other constants (e.g. ImageNet-C's, for cross-checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from richkd.errors import RichKDError
from richkd.robustness._common import ROW_BITS, Rngs, image_rngs
from richkd.robustness._digital import DIGITAL
from richkd.robustness._noise_blur import NOISE_BLUR
from richkd.robustness._spatter import SPATTER
from richkd.robustness._weather import WEATHER

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
    "snow", "frost", "fog", "spatter",
    "brightness", "contrast", "saturate", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# make_cifar_c.py's constants, severity 1..5. zoom_blur: np.arange(start, stop, step); elastic_transform:
# (alpha, sigma, affine) as fractions of the side (the script writes IMSIZE * fraction with IMSIZE = 32).
CIFAR_C_PARAMS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}

_FUNCTIONS: dict[str, Callable[[np.ndarray, Any, Rngs], np.ndarray]] = {
    **NOISE_BLUR, **WEATHER, **SPATTER, **DIGITAL
}


def check_corruption(name: str, severity: int | None = None) -> None:
    """RichKDError naming the valid values unless `name` (and `severity`, when given) are known."""
    if name not in CORRUPTIONS:
        raise RichKDError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity is not None and (isinstance(severity, bool) or severity not in SEVERITIES):
        raise RichKDError(f"severity must be one of 1, 2, 3, 4, 5 (got {severity!r})")


def corrupt(images: Tensor, name: str, severity: int, *, seed: int = 0, rows: Tensor | None = None) -> Tensor:
    """Corrupt uint8 `[N, 3, H, W]` images with CIFAR-C corruption `name` at `severity` (1-5) -> uint8, same shape.

    Deterministic: the same (seed, row id) gives the same bytes. `rows` are the images' row ids in their
    dataset (default 0..N-1); pass them when corrupting a slice or a subset so each image gets its own draws.
    """
    check_corruption(name, severity)
    return corrupt_with_params(images, name, CIFAR_C_PARAMS[name][severity - 1], seed=seed, rows=rows)


def corrupt_with_params(
    images: Tensor, name: str, params: Any, *, seed: int = 0, rows: Tensor | None = None
) -> Tensor:
    """`corrupt` with explicit constants in place of a CIFAR-C severity (cross-checks, other datasets' tables)."""
    check_corruption(name)
    row_ids = _check_inputs(images, seed, rows)
    if images.shape[0] == 0:
        return images.clone()
    x = images.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0  # [N, H, W, 3]
    rngs = image_rngs(seed, CORRUPTIONS.index(name), row_ids)
    y = _FUNCTIONS[name](x, params, rngs)
    out = np.floor(np.clip(y, 0.0, 1.0) * 255.0 + 1e-6).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


def _check_inputs(images: Tensor, seed: int, rows: Tensor | None) -> np.ndarray:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise RichKDError(f"corrupt needs uint8 images [N, 3, H, W], got {got}")
    if images.shape[2] < 8 or images.shape[3] < 8:
        raise RichKDError(f"corrupt needs images of at least 8x8 pixels, got {images.shape[3]}x{images.shape[2]}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise RichKDError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    n = images.shape[0]
    if rows is None:
        return np.arange(n, dtype=np.int64)
    row_ids = rows.detach().cpu().numpy()
    if row_ids.shape != (n,) or not np.issubdtype(row_ids.dtype, np.integer):
        raise RichKDError(f"rows must be {n} integer row ids, got {rows.dtype} {tuple(rows.shape)}")
    if n and (row_ids.min() < 0 or row_ids.max() >= 2**ROW_BITS):
        raise RichKDError(f"row ids must lie in [0, 2**{ROW_BITS})")
    return row_ids.astype(np.int64)

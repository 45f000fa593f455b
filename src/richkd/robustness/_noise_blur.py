"""Noise and blur corruptions (Hendrycks & Dietterich 2019), batched: each takes float64 `[N, H, W, 3]` in
[0, 1], the severity's constants `c` and one generator per image, and returns float64 (clipped later).

Where these follow the reference `make_cifar_c.py` and where they knowingly differ is written in
`richkd.robustness.corruptions`' docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage as ndi

from richkd.robustness._common import Rngs, clipped_zoom, gaussian_hw, motion_blur


def gaussian_noise(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """x + N(0, c^2), independently per pixel and channel."""
    return x + c * np.stack([g.standard_normal(x.shape[1:]) for g in rngs])


def shot_noise(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """Poisson photon noise: Poisson(x * c) / c (c = photons at full intensity; lower is noisier)."""
    return np.stack([g.poisson(xi * c) for g, xi in zip(rngs, x, strict=True)]) / c


def impulse_noise(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """Salt-and-pepper (skimage random_noise 's&p'): a fraction c of values set to 0 or 1 with equal odds."""
    u = np.stack([g.random((2, *x.shape[1:])) for g in rngs])
    flipped, salt = u[:, 0] < c, u[:, 1] < 0.5
    return np.where(flipped, salt.astype(np.float64), x)


def speckle_noise(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """Multiplicative noise: x + x * N(0, c^2)."""
    return x + x * c * np.stack([g.standard_normal(x.shape[1:]) for g in rngs])


def gaussian_blur(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """Gaussian blur with sigma c pixels (skimage defaults: nearest border, truncate at 4 sigma)."""
    return gaussian_hw(x, c)


def glass_blur(x: np.ndarray, c: tuple[float, int, int], rngs: Rngs) -> np.ndarray:
    """Blur, locally scramble pixels, blur again: c = (sigma, max_delta, iterations).

    Faithful to the reference's two quirks: offsets are drawn from [-max_delta, max_delta) (numpy's randint
    excludes the top), and its tuple "swap" of two numpy views copies the neighbour into the pixel and leaves
    the neighbour unchanged, so pixels are duplicated, not exchanged. The raster order (bottom-right to
    top-left) matters because later steps read earlier results; it is kept, vectorised across images.
    """
    sigma, delta, iterations = float(c[0]), int(c[1]), int(c[2])
    n, h, w, _ = x.shape
    y = np.floor(gaussian_hw(x, sigma) * 255.0)  # np.uint8(...) truncates
    hs, ws = list(range(h - delta, delta, -1)), list(range(w - delta, delta, -1))
    offsets = np.stack([g.integers(-delta, delta, size=(iterations, len(hs), len(ws), 2)) for g in rngs])
    ar = np.arange(n)
    for it in range(iterations):
        for a, hh in enumerate(hs):
            for b, ww in enumerate(ws):
                dx, dy = offsets[:, it, a, b, 0], offsets[:, it, a, b, 1]
                y[ar, hh, ww] = y[ar, hh + dy, ww + dx]
    return gaussian_hw(y / 255.0, sigma)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference `disk`: a normalised filled disc, anti-aliased by a small Gaussian (3x3, or 5x5 for radius > 8),
    trimmed to its non-zero support."""
    if radius <= 8:
        support, ksize = np.arange(-8, 8 + 1), 3
    else:
        r = int(radius)
        support, ksize = np.arange(-r, r + 1), 5
    xx, yy = np.meshgrid(support, support)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.arange(ksize) - ksize // 2
    g = np.exp(-(taps**2) / (2.0 * alias_blur**2))
    g /= g.sum()
    kernel = ndi.correlate1d(ndi.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    rows, cols = np.nonzero(kernel.any(axis=1))[0], np.nonzero(kernel.any(axis=0))[0]
    trimmed: np.ndarray = kernel[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return trimmed


def defocus_blur(x: np.ndarray, c: tuple[float, float], rngs: Rngs) -> np.ndarray:
    """Convolution with an anti-aliased disc: c = (radius, alias_blur); OpenCV's reflect-101 border."""
    kernel = disk_kernel(float(c[0]), float(c[1]))
    out: np.ndarray = ndi.correlate(x, kernel[None, :, :, None], mode="mirror")
    return out


def motion_blur_corruption(x: np.ndarray, c: tuple[float, float], rngs: Rngs) -> np.ndarray:
    """Motion blur at a random angle in [-45, 45) degrees: c = (radius, sigma) of ImageMagick's motion blur.

    The reference calls ImageMagick's MotionBlurImage through Wand; this is the same one-sided line kernel
    (see `_common.motion_blur`), written back as 8 bits with rounding like ImageMagick's PNG output.
    """
    angles = np.array([g.uniform(-45.0, 45.0) for g in rngs])
    blurred = np.clip(motion_blur(x, float(c[0]), float(c[1]), angles), 0, 1)
    out: np.ndarray = np.round(blurred * 255.0) / 255.0
    return out


def zoom_blur(x: np.ndarray, c: tuple[float, float, float], rngs: Rngs) -> np.ndarray:
    """Mean of the image and its centre zooms by np.arange(*c) (c = start, stop, step, as the reference
    writes them; the arange keeps its floating-point end, e.g. arange(1, 1.06, 0.01) has 7 factors)."""
    factors = np.arange(float(c[0]), float(c[1]), float(c[2]))
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, float(factor))
    mean: np.ndarray = (x + out) / (len(factors) + 1)
    return mean


NOISE_BLUR: dict[str, Any] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur_corruption,
    "zoom_blur": zoom_blur,
    "gaussian_blur": gaussian_blur,
}

__all__ = ["NOISE_BLUR", "disk_kernel"]

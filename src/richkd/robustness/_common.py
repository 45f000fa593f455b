"""Building blocks shared by the corruptions: per-image random streams, filters, resampling, motion blur.

Every function works on a whole batch at once: images are float64 numpy arrays `[N, H, W, C]` in [0, 1]
(the channel-last layout the reference code uses), random draws come from one generator per image.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

Rngs = list[np.random.Generator]

ROW_BITS = 48  # row ids up to 2**48; the stream id sits above them in the Philox key


def image_rngs(seed: int, stream: int, rows: np.ndarray) -> Rngs:
    """One independent generator per image, keyed by (seed, stream, row id).

    Keying by the row id (not the position in the batch) makes a corrupted image the same whether it is
    corrupted alone, in a batch, or as part of a stratified subset. Philox is counter-based, so distinct keys
    give independent streams without any seeding pass.
    """
    base = (seed << 64) | (stream << ROW_BITS)
    return [np.random.Generator(np.random.Philox(key=base | int(r))) for r in rows]


def gaussian_hw(x: np.ndarray, sigma: float, *, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over the two spatial axes of `[N, H, W]` or `[N, H, W, C]` (skimage.filters.gaussian's
    defaults: mode 'nearest', truncate 4), never across images or channels."""
    sigmas = (0.0, sigma, sigma) + (0.0,) * (x.ndim - 3)
    if sigma <= 0:
        return x.astype(np.float64, copy=True)
    out: np.ndarray = ndi.gaussian_filter(x.astype(np.float64, copy=False), sigmas, mode=mode, truncate=truncate)
    return out


def box3_reflect101(x: np.ndarray) -> np.ndarray:
    """3x3 mean over the spatial axes of `[N, H, W]` with OpenCV's default border (reflect-101), like cv2.blur."""
    out: np.ndarray = ndi.uniform_filter(x.astype(np.float64), size=(1, 3, 3), mode="mirror")
    return out


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre crop of `[N, H, W, C]` by `factor` and cut back to H x W (the reference `clipped_zoom`).

    The crop is ceil(H / factor) pixels, resized with linear interpolation to round(crop * factor) pixels
    with corners mapped onto corners (scipy.ndimage.zoom order=1, which is align_corners=True bilinear).
    """
    n, h, w, c = x.shape
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = torch.from_numpy(np.ascontiguousarray(x[:, top : top + ch, left : left + cw])).permute(0, 3, 1, 2)
    oh, ow = round(ch * factor), round(cw * factor)
    if (oh, ow) == (ch, cw):  # scipy maps corners onto corners: an unchanged size is the identity
        zoomed = crop
    else:
        zoomed = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    t, le = (oh - h) // 2, (ow - w) // 2
    return zoomed[:, :, t : t + h, le : le + w].permute(0, 2, 3, 1).numpy().copy()


def motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage weights: a one-sided Gaussian over 2*ceil(radius)+1 taps, normalised."""
    width = int(2 * math.ceil(radius) + 1)
    k = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2.0 * sigma * sigma))
    out: np.ndarray = k / k.sum()
    return out


def motion_blur(x: np.ndarray, radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """Line-kernel motion blur of `[N, H, W, C]`, one angle per image (degrees, 0 = rightwards, y down).

    Tap i reads the pixel round(i*cos a), round(i*sin a) away (ImageMagick's ceil(v - 0.5) rounding),
    with edge pixels repeated outside the image (ImageMagick's default virtual-pixel method).
    """
    n, h, w, _ = x.shape
    kernel = motion_kernel(radius, sigma)
    a = np.deg2rad(angles_deg.astype(np.float64))
    cos, sin = np.cos(a), np.sin(a)
    ar = np.arange(n)[:, None, None]
    rows, cols = np.arange(h), np.arange(w)
    out = np.zeros_like(x, dtype=np.float64)
    for i, weight in enumerate(kernel):
        ox = np.ceil(i * cos - 0.5).astype(np.int64)
        oy = np.ceil(i * sin - 0.5).astype(np.int64)
        r = np.clip(rows[None, :] + oy[:, None], 0, h - 1)
        c = np.clip(cols[None, :] + ox[:, None], 0, w - 1)
        out += weight * x[ar, r[:, :, None], c[:, None, :]]
    return out


def reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Index reflected about the edge pixels (OpenCV BORDER_REFLECT_101, scipy 'mirror'): -1 -> 1."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * n - 2
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def symmetric(i: np.ndarray, n: int) -> np.ndarray:
    """Index reflected about the image border, edge repeated (scipy 'reflect', OpenCV BORDER_REFLECT): -1 -> 0."""
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def sample_bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, border: str) -> np.ndarray:
    """Bilinear read of `[N, H, W, C]` at fractional (rows, cols) `[N, H, W]`; border 'reflect101' | 'symmetric'.

    Folding each integer neighbour through the border is exact for both reflections (they are piecewise
    linear), so this equals cv2.remap / scipy map_coordinates(order=1) up to their coordinate rounding.
    """
    n, h, w, _ = x.shape
    fold = reflect101 if border == "reflect101" else symmetric
    r0f, c0f = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0f)[..., None], (cols - c0f)[..., None]
    r0, c0 = r0f.astype(np.int64), c0f.astype(np.int64)
    ra, rb = fold(r0, h), fold(r0 + 1, h)
    ca, cb = fold(c0, w), fold(c0 + 1, w)
    ar = np.arange(n)[:, None, None]
    top = x[ar, ra, ca] * (1 - fc) + x[ar, ra, cb] * fc
    bottom = x[ar, rb, ca] * (1 - fc) + x[ar, rb, cb] * fc
    out: np.ndarray = top * (1 - fr) + bottom * fr
    return out


def plasma_fractal(rngs: Rngs, mapsize: int, wibble_decay: float) -> np.ndarray:
    """Diamond-square height maps `[N, mapsize, mapsize]` in [0, 1], one per generator (the reference
    `plasma_fractal`, including its `wibble * uniform(-wibble, wibble)` perturbation)."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    n, m = len(rngs), mapsize
    draws, step = 0, m
    while step >= 2:
        draws += 3 * (m // step) ** 2
        step //= 2
    u = np.stack([g.random(draws) for g in rngs]) if n else np.zeros((0, draws))
    grid = np.zeros((n, m, m))
    pos, wibble, step = 0, 100.0, m

    def wibbled(acc: np.ndarray) -> np.ndarray:
        nonlocal pos
        k = acc[0].size if n else int(np.prod(acc.shape[1:]))
        noise = u[:, pos : pos + k].reshape(acc.shape)
        pos += k
        return acc / 4 + wibble * (2 * wibble * noise - wibble)

    while step >= 2:
        half = step // 2
        corner = grid[:, 0:m:step, 0:m:step]
        acc = corner + np.roll(corner, -1, axis=1)
        acc = acc + np.roll(acc, -1, axis=2)
        grid[:, half:m:step, half:m:step] = wibbled(acc)
        dr = grid[:, half:m:step, half:m:step]
        ul = grid[:, 0:m:step, 0:m:step]
        grid[:, 0:m:step, half:m:step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2))
        grid[:, half:m:step, 0:m:step] = wibbled(dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1))
        step //= 2
        wibble /= wibble_decay
    grid -= grid.min(axis=(1, 2), keepdims=True)
    out: np.ndarray = grid / grid.max(axis=(1, 2), keepdims=True)
    return out

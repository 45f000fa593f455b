"""Spatter (water drops or mud) and the small OpenCV routines it needs, in numpy, batched over images.

The reference builds the water-drop shading with cv2.Canny, cv2.distanceTransform(DIST_L2, 5),
cv2.equalizeHist, cv2.filter2D and cv2.blur. OpenCV is not a dependency, so each is re-implemented here from
OpenCV's documented algorithm (Sobel 3x3 with replicated border, L1 gradient, non-maximum suppression with
OpenCV's 22.5/67.5-degree tests, 8-connected hysteresis; the 5x5 chamfer metric 1 / 1.4 / 2.1969 in
OpenCV's 16-bit fixed point; 8-bit rounding and saturation where OpenCV has them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage as ndi

from richkd.robustness._common import Rngs, gaussian_hw

_TG22 = 13573  # round(tan(22.5 deg) * 2**15), OpenCV's fixed-point direction test
_CHAMFER = ((1, 0, 65536), (1, 1, 91750), (2, 1, 143976))  # (dy, dx, weight * 2**16) for 1, 1.4, 2.1969
_WATER = np.array([175.0, 238.0, 238.0]) / 255.0  # pale turquoise
_MUD = np.array([63.0, 42.0, 20.0]) / 255.0  # mud brown


def _shift(a: np.ndarray, dy: int, dx: int, fill: float | np.integer[Any]) -> np.ndarray:
    """out[:, y, x] = a[:, y + dy, x + dx], `fill` outside."""
    n, h, w = a.shape
    p = max(abs(dy), abs(dx))
    padded = np.pad(a, ((0, 0), (p, p), (p, p)), constant_values=fill)
    return padded[:, p + dy : p + dy + h, p + dx : p + dx + w]


def canny(img: np.ndarray, low: int, high: int) -> np.ndarray:
    """Edges (bool `[N, H, W]`) of 8-bit images, as cv2.Canny(img, low, high) with aperture 3, L1 gradient."""
    p = np.pad(img.astype(np.int64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    dx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])
    dy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])
    m = np.abs(dx) + np.abs(dy)
    ax, ay = np.abs(dx), np.abs(dy) << 15
    tg22 = ax * _TG22
    horizontal, vertical = ay < tg22, ay > tg22 + (ax << 16)
    same_sign = (dx ^ dy) >= 0

    def nb(dy_: int, dx_: int) -> np.ndarray:
        return _shift(m, dy_, dx_, 0)

    diagonal = np.where(same_sign, (m > nb(-1, -1)) & (m > nb(1, 1)), (m > nb(-1, 1)) & (m > nb(1, -1)))
    peak = np.where(
        horizontal, (m > nb(0, -1)) & (m >= nb(0, 1)), np.where(vertical, (m > nb(-1, 0)) & (m >= nb(1, 0)), diagonal)
    )
    candidate = peak & (m > low)
    strong = candidate & (m > high)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    labels, count = ndi.label(candidate, structure=structure)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    edges: np.ndarray = keep[labels]
    return edges


def chamfer_distance(zero: np.ndarray, cap: float) -> np.ndarray:
    """min(cap, distance to the nearest True pixel) with OpenCV's 5x5 chamfer metric (DIST_L2, mask 5).

    Relaxation over the 16 chamfer moves; every move costs >= 1, so ceil(cap) + 1 rounds settle every
    distance <= cap (larger ones are capped anyway). Paths stay inside the image, as in OpenCV.
    """
    big = np.int64(1) << 40
    d = np.where(zero, np.int64(0), big)
    moves: set[tuple[int, int, int]] = set()
    for a, b, weight in _CHAMFER:
        for sy in (-1, 1):
            for sx in (-1, 1):
                moves |= {(sy * a, sx * b, weight), (sy * b, sx * a, weight)}
    for _ in range(int(np.ceil(cap)) + 1):
        best = d
        for dy, dx, weight in sorted(moves):
            best = np.minimum(best, _shift(d, dy, dx, big) + weight)
        if np.array_equal(best, d):
            break
        d = best
    dist: np.ndarray = np.minimum(d / 65536.0, cap).astype(np.float32)
    return dist


def _box3_sum(a: np.ndarray) -> np.ndarray:
    p = np.pad(a.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="reflect")  # numpy 'reflect' = reflect-101
    h, w = a.shape[1:]
    out: np.ndarray = sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3))  # type: ignore[assignment]
    return out


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """cv2.equalizeHist per 8-bit image: lut[v] = round(255 * cdf(v excluding the lowest level) / (n - n_low))."""
    n, h, w = img.shape
    flat = img.reshape(n, -1).astype(np.int64)
    hist = np.zeros((n, 256), dtype=np.int64)
    np.add.at(hist, (np.arange(n)[:, None], flat), 1)
    first = np.argmax(hist > 0, axis=1)
    total = h * w
    low_count = hist[np.arange(n), first]
    above = np.where(np.arange(256)[None, :] > first[:, None], hist, 0)
    scale = np.float32(255.0) / np.maximum(total - low_count, 1).astype(np.float32)
    lut = np.clip(np.rint(np.cumsum(above, axis=1).astype(np.float32) * scale[:, None]), 0, 255)
    lut = np.where(np.arange(256)[None, :] < first[:, None], 0, lut)
    lut = np.where((low_count == total)[:, None], first[:, None], lut)  # a flat image maps to itself
    out: np.ndarray = np.take_along_axis(lut, flat, axis=1).reshape(n, h, w)
    return out


def water_shading(liquid_u8: np.ndarray) -> np.ndarray:
    """The reference's drop-rim shading of an 8-bit liquid map `[N, H, W]` -> float `[N, H, W]` (not normalised)."""
    edges = canny(liquid_u8, 50, 150)
    dist = chamfer_distance(edges, 20.0)
    dist = np.floor((_box3_sum(dist) * (1.0 / 9.0)).astype(np.float32))  # cv2.blur on float, then uint8 cast
    dist = equalize_hist(dist)
    kernel = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))
    p = np.pad(dist.astype(np.int64), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = dist.shape[1:]
    emboss = sum(kernel[i][j] * p[:, i : i + h, j : j + w] for i in range(3) for j in range(3))
    emboss = np.clip(emboss, 0, 255)  # filter2D to CV_8U saturates
    shading: np.ndarray = np.rint(_box3_sum(emboss) / 9.0)  # cv2.blur on uint8 rounds
    return liquid_u8.astype(np.float32) * shading.astype(np.float32)


def spatter_from_liquid(x: np.ndarray, liquid: np.ndarray, c: tuple[float, ...]) -> np.ndarray:
    """Spatter given the raw Gaussian liquid field `[N, H, W]` (split out so tests can inject one)."""
    _, _, sigma, threshold, strength, mud = (float(v) for v in c)
    liquid = gaussian_hw(liquid, sigma)
    liquid[liquid < threshold] = 0
    if mud == 0:
        # np.uint8(liquid * 255) in the reference wraps values above 1.0 (rare); we saturate them instead.
        liquid_u8 = np.floor(np.clip(liquid * 255.0, 0, 255))
        m = water_shading(liquid_u8).astype(np.float64)
        peak = m.max(axis=(1, 2), keepdims=True)
        # The reference divides by the peak unguarded (NaN on an image without drops); we add nothing there.
        m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0) * strength
        wet: np.ndarray = x + m[..., None] * _WATER
        return wet
    m = gaussian_hw((liquid > threshold).astype(np.float64), strength)
    m[m < 0.8] = 0
    return x * (1 - m[..., None]) + m[..., None] * _MUD


def spatter(x: np.ndarray, c: tuple[float, ...], rngs: Rngs) -> np.ndarray:
    """Water drops (c[5] == 0) or mud (c[5] == 1): c = (loc, scale, sigma, threshold, strength, mud)."""
    h, w = x.shape[1:3]
    liquid = np.stack([g.normal(float(c[0]), float(c[1]), size=(h, w)) for g in rngs])
    return spatter_from_liquid(x, liquid, c)


SPATTER: dict[str, Any] = {"spatter": spatter}

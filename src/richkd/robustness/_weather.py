"""Weather corruptions: snow, frost (with a procedural frost texture), fog. Batched like `_noise_blur`."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from richkd.robustness._common import Rngs, clipped_zoom, motion_blur, plasma_fractal


def snow(x: np.ndarray, c: tuple[float, ...], rngs: Rngs) -> np.ndarray:
    """Falling snow: c = (loc, scale, zoom, threshold, blur radius, blur sigma, blend).

    A Gaussian flake layer is zoomed, thresholded, motion-blurred at an angle in [-135, -45) degrees (the
    reference uses ImageMagick; we use its line kernel, `_common.motion_blur`) and added twice (once rotated
    by 180 degrees) to an image brightened towards 1.5 * grey + 0.5.
    """
    loc, scale, zoom, threshold, radius, sigma, blend = (float(v) for v in c)
    n, h, w, _ = x.shape
    layer = np.stack([g.normal(loc, scale, size=(h, w)) for g in rngs])[..., None]
    angles = np.array([g.uniform(-135.0, -45.0) for g in rngs])
    layer = clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255.0) / 255.0  # the 8-bit image handed to ImageMagick
    layer = np.round(motion_blur(layer, radius, sigma, angles) * 255.0) / 255.0  # and its 8-bit output
    grey = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]  # cv2 RGB2GRAY
    x = blend * x + (1 - blend) * np.maximum(x, grey * 1.5 + 0.5)
    return x + layer + layer[:, ::-1, ::-1]


# Per-channel (R, G, B) mean and standard deviation of the reference's five frost photos after its 0.2x
# resize (measured here on frost1.png ... frost5.jpg; frost2 and frost3 are the same photo). The procedural
# textures below are scaled to these, so frost adds as much light and tint as the photos do.
FROST_STATS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.305, 0.585, 0.650), (0.089, 0.055, 0.051)),
    ((0.787, 0.805, 0.841), (0.068, 0.071, 0.073)),
    ((0.787, 0.805, 0.841), (0.068, 0.071, 0.073)),
    ((0.540, 0.599, 0.648), (0.082, 0.082, 0.088)),
    ((0.441, 0.484, 0.528), (0.143, 0.138, 0.131)),
)
FROST_TEXTURE_SEED = 2019  # the textures are fixed assets, like the photos: the user seed only picks crops


def _standardise(a: np.ndarray) -> np.ndarray:
    out: np.ndarray = (a - a.mean()) / max(float(a.std()), 1e-12)
    return out


def _ice_needles(rng: np.random.Generator, side: int) -> np.ndarray:
    """Thin bright crystals: random needles with 60-degree side branches, drawn 4x supersampled and box-filtered
    down so they are anti-aliased like a photo."""
    big = 4 * side
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(2 * side):
        x0, y0 = rng.uniform(0, big, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.02, 0.12) * big
        shade = int(rng.uniform(120, 255))
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=shade, width=int(rng.integers(1, 3)))
        for t in rng.uniform(0.2, 0.9, size=int(rng.integers(2, 6))):
            bx, by = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            side_angle = angle + rng.choice([-1.0, 1.0]) * math.pi / 3
            branch = rng.uniform(0.1, 0.35) * length
            draw.line([(bx, by), (bx + branch * math.cos(side_angle), by + branch * math.sin(side_angle))],
                      fill=int(shade * 0.8), width=1)
    small = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _value_noise(rng: np.random.Generator, side: int) -> np.ndarray:
    """Fractal value noise (octaves of bilinearly upsampled random grids, amplitude halving): frosted haze."""
    out = np.zeros((side, side))
    cells, amplitude = 4, 1.0
    while cells <= side:
        grid = rng.random((cells, cells))
        up = Image.fromarray(grid.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BILINEAR)
        out += amplitude * np.asarray(up, dtype=np.float64)
        cells, amplitude = cells * 2, amplitude / 2
    return out


@functools.lru_cache(maxsize=4)
def frost_textures(side: int) -> np.ndarray:
    """Five fixed RGB frost textures `[5, side, side, 3]` in [0, 1], made procedurally (no photo assets)."""
    textures = []
    for k, (mean, std) in enumerate(FROST_STATS):
        rng = np.random.default_rng([FROST_TEXTURE_SEED, k])
        z = _standardise(_standardise(_ice_needles(rng, side)) + 0.6 * _standardise(_value_noise(rng, side)))
        rgb = np.stack([m + s * z for m, s in zip(mean, std, strict=True)], axis=-1)
        textures.append(np.clip(rgb, 0, 1))
    return np.stack(textures)


def frost(x: np.ndarray, c: tuple[float, float], rngs: Rngs) -> np.ndarray:
    """Frost on the lens: c0 * image + c1 * a random crop of one of five frost textures.

    The reference crops photos of frost (frost1..frost5; its randint(5) never picks frost6) resized by 0.2;
    here the textures are procedural, 4x the image side, scaled to those photos' colour statistics.
    """
    n, h, w, _ = x.shape
    side = 4 * max(h, w)
    textures = frost_textures(side)
    crops = np.empty_like(x)
    for i, g in enumerate(rngs):
        k = int(g.integers(len(textures)))
        top, left = int(g.integers(0, side - h)), int(g.integers(0, side - w))
        crops[i] = textures[k, top : top + h, left : left + w]
    return float(c[0]) * x + float(c[1]) * crops


def fog(x: np.ndarray, c: tuple[float, float], rngs: Rngs) -> np.ndarray:
    """Fog: add c0 * a diamond-square plasma map (roughness decay c1), then rescale by max / (max + c0)."""
    amount, decay = float(c[0]), float(c[1])
    n, h, w, _ = x.shape
    mapsize = 1 << max(h - 1, w - 1, 1).bit_length()  # smallest power of two >= the image (32 for CIFAR)
    plasma = plasma_fractal(rngs, mapsize, decay)[:, :h, :w, None]
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    out: np.ndarray = (x + amount * plasma) * max_val / (max_val + amount)
    return out


WEATHER: dict[str, Any] = {"snow": snow, "frost": frost, "fog": fog}

__all__ = ["FROST_STATS", "WEATHER", "frost_textures"]

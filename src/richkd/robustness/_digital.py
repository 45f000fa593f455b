"""Digital corruptions: brightness, contrast, saturate (via skimage's HSV), elastic transform, pixelate, JPEG.
Batched like `_noise_blur`; pixelate and JPEG call Pillow image by image, as the reference does."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from richkd.robustness._common import Rngs, sample_bilinear


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv on `[..., 3]` in [0, 1] (ties for the max channel go to blue, then green)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    safe = np.where(delta == 0, 1.0, delta)
    s = np.where(delta == 0, 0.0, delta / np.where(v == 0, 1.0, v))
    h = np.where(r == v, (g - b) / safe, 0.0)
    h = np.where(g == v, 2.0 + (b - r) / safe, h)
    h = np.where(b == v, 4.0 + (r - g) / safe, h)
    h = np.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb on `[..., 3]`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = hi.astype(np.int64) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(hsv)
    for k, triple in enumerate(choices):
        sel = sector == k
        for ch in range(3):
            out[..., ch] = np.where(sel, triple[ch], out[..., ch])
    return out


def brightness(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """Add c to the HSV value channel (clipped to 1)."""
    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return hsv_to_rgb(hsv)


def contrast(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """Pull every channel towards its own image mean: (x - mean) * c + mean."""
    means = x.mean(axis=(1, 2), keepdims=True)
    out: np.ndarray = (x - means) * c + means
    return out


def saturate(x: np.ndarray, c: tuple[float, float], rngs: Rngs) -> np.ndarray:
    """Scale and shift the HSV saturation: s * c0 + c1 (clipped to [0, 1])."""
    hsv = rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * float(c[0]) + float(c[1]), 0, 1)
    return hsv_to_rgb(hsv)


def elastic_transform(x: np.ndarray, c: tuple[float, float, float], rngs: Rngs) -> np.ndarray:
    """Random affine warp, then a smooth random displacement field: c = (alpha, sigma, affine) as fractions of
    the image side (the reference writes them as 32 * fraction for CIFAR).

    The affine moves three anchor points by up to `affine` pixels (cv2.getAffineTransform/warpAffine with
    reflect-101 border in the reference; here exact float bilinear sampling, where OpenCV rounds coordinates
    to 1/32 pixel). The field is uniform(-1, 1) noise blurred with sigma (scipy 'reflect', truncate 3) and
    scaled by alpha, sampled bilinearly with the 'reflect' border like scipy.ndimage.map_coordinates.
    """
    n, h, w, _ = x.shape
    side = min(h, w)
    alpha, sigma, affine = (float(v) * side for v in c)
    centre_x, centre_y, half = w // 2, h // 2, side // 3
    src = np.array(
        [[centre_x + half, centre_y + half], [centre_x + half, centre_y - half], [centre_x - half, centre_y - half]],
        dtype=np.float64,
    )
    dst = np.stack([src + g.uniform(-affine, affine, size=(3, 2)) for g in rngs]) if n else np.zeros((0, 3, 2))
    fields = np.stack([g.uniform(-1, 1, size=(2, h, w)) for g in rngs]) if n else np.zeros((0, 2, h, w))
    # M maps source (x, y, 1) to destination: solve [src | 1] @ M.T = dst for each image.
    lhs = np.concatenate([src, np.ones((3, 1))], axis=1)
    m = np.linalg.solve(np.broadcast_to(lhs, (n, 3, 3)), dst).transpose(0, 2, 1)  # [N, 2, 3]
    lin_inv = np.linalg.inv(m[:, :, :2])
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    ox, oy = xs[None] - m[:, 0, 2, None, None], ys[None] - m[:, 1, 2, None, None]
    src_x = lin_inv[:, 0, 0, None, None] * ox + lin_inv[:, 0, 1, None, None] * oy
    src_y = lin_inv[:, 1, 0, None, None] * ox + lin_inv[:, 1, 1, None, None] * oy
    warped = sample_bilinear(x, src_y, src_x, border="reflect101")
    if alpha == 0:
        return warped
    smooth = ndi.gaussian_filter(fields, (0, 0, sigma, sigma), mode="reflect", truncate=3.0) * alpha
    dx, dy = smooth[:, 0].astype(np.float32), smooth[:, 1].astype(np.float32)
    return sample_bilinear(warped, ys[None] + dy, xs[None] + dx, border="symmetric")


def _per_image(x: np.ndarray, fn: Any) -> np.ndarray:
    out = np.empty_like(x)
    for i, img in enumerate(x):
        pil = Image.fromarray(np.rint(img * 255.0).astype(np.uint8))
        out[i] = np.asarray(fn(pil), dtype=np.float64) / 255.0
    return out


def pixelate(x: np.ndarray, c: float, rngs: Rngs) -> np.ndarray:
    """Box-downsample to int(side * c) pixels and box-upsample back (Pillow BOX both ways, as the reference)."""
    h, w = x.shape[1:3]
    small = (int(w * c), int(h * c))
    return _per_image(x, lambda im: im.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def jpeg_compression(x: np.ndarray, c: int, rngs: Rngs) -> np.ndarray:
    """Encode and decode as JPEG at quality c with Pillow's defaults (4:2:0 chroma subsampling)."""
    return _per_image(x, lambda im: _jpeg(im, int(c)))


DIGITAL: dict[str, Any] = {
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}

"""The standard ImageNet transforms with PIL (simplejpeg where installed) + torch, no torchvision: RandomResizedCrop
+ flip for training, resize + centre crop for evaluation, then scaling to float and ImageNet mean/std normalisation.

Geometry follows torchvision's `RandomResizedCrop(224)` (scale 0.08-1, ratio 3/4-4/3, 10 tries, centre-crop
fallback), `Resize(256)` and `CenterCrop(224)`; PIL's BILINEAR resize antialiases when shrinking, as
torchvision's PIL path does. Randomness comes from a `random.Random` the caller seeds per (epoch, row), so a
row's augmentation does not depend on which worker decoded it.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from richkd.errors import RichKDError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[int, int, int, int]  # left, top, width, height


def random_resized_crop_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """torchvision's RandomResizedCrop.get_params: a box of random area fraction and aspect ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height  # fallback: the whole image, clamped to the ratio range, centred
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


try:  # the `imagenet` extra: libjpeg-turbo without PIL's per-image overhead
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the installed extras
    _simplejpeg = None

JPEG_DECODER = "simplejpeg" if _simplejpeg is not None else "pillow"  # which decoder decode_rgb uses for JPEGs
# JPEG colour spaces whose simplejpeg RGB output is bit-identical to PIL's convert("RGB") (tests/test_jpeg_decode.py);
# CMYK/YCCK (off by one against PIL's conversion) and anything else go to PIL.
_SIMPLEJPEG_COLORSPACES = frozenset({"YCbCr", "Gray"})


def _decode_simplejpeg(data: bytes) -> Image.Image | None:
    """simplejpeg's decode with PIL's settings (accurate DCT, fancy upsampling), or None to let PIL decode."""
    if _simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
        too_big = Image.MAX_IMAGE_PIXELS is not None and height * width > 2 * Image.MAX_IMAGE_PIXELS
        if colorspace not in _SIMPLEJPEG_COLORSPACES or too_big:  # PIL raises the decompression-bomb error
            return None
        # RGBX is PIL's own 4-byte layout for "RGB", so unpacking it is a plain copy (RGB + fromarray measured slower
        # than PIL itself)
        array = _simplejpeg.decode_jpeg(data, colorspace="RGBX", fastdct=False, fastupsample=False)
    except (ValueError, OSError):  # corrupt or unusual: PIL decides (and names the error)
        return None
    return Image.frombytes("RGB", (width, height), array, "raw", "RGBX")


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """JPEG/PNG bytes -> RGB PIL image (ImageNet holds a few CMYK and greyscale files).

    With simplejpeg installed, YCbCr and greyscale JPEGs decode through it (1.6-1.9x less decode CPU time, same pixels);
    everything else through PIL.
    """
    img = _decode_simplejpeg(data)
    if img is not None:
        return img
    try:
        with Image.open(io.BytesIO(data)) as pil:
            return pil.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise RichKDError(f"cannot decode image {name} ({err}); remove or replace the file") from None


def train_view(img: Image.Image, rng: random.Random, size: int = 224) -> Image.Image:
    """RandomResizedCrop(size) then a horizontal flip with probability 1/2."""
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def eval_view(img: Image.Image, size: int = 224, resize: int = 256) -> Image.Image:
    """Resize the shorter side to `resize` (torchvision's rounding), then crop the centre `size` square."""
    short, long = sorted((img.width, img.height))
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if img.width <= img.height else (new_long, new_short)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_normalized_tensor(
    img: Image.Image, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> Tensor:
    """RGB PIL image -> float32 [3, H, W], (x / 255 - mean) / std."""
    array = np.array(img, dtype=np.uint8)  # [H, W, 3], a writable copy (torch refuses read-only arrays)
    x = torch.from_numpy(array).permute(2, 0, 1).to(torch.float32)  # [3, H, W]
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)
    return x.mul_(scale).add_(shift)

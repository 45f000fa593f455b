"""The input a model was trained on (InputSpec), and turning user image files into exactly that input.

Decoding goes through the training decoder (richkd.data.decode.decode_images: PIL, EXIF-oriented RGB, shorter
side to the size then a centre crop, or a squash when the run used data.resize=squash; identity when the size
already matches), so `richkd classify` and `richkd eval`
see identical pixels for the same JPEG.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from richkd.data.decode import IMAGE_EXTENSIONS, RESIZE_MODES, decode_images
from richkd.errors import RichKDError

Color = Literal["rgb", "grey"]
GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class InputSpec:
    """What the network was fed: uint8 [3, H, W] images, normalised as (x/255 - mean) / std.

    `color="grey"`: images are turned to luma and the grey channel is replicated to 3 (Fashion-MNIST).
    `pad`: a zero border added after resizing to (H - 2*pad, W - 2*pad) (Fashion-MNIST: 28 -> 32).
    """

    size: tuple[int, int]  # (H, W) the model sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: Color = "rgb"
    pad: int = 0
    resize: str = "shorter"  # how an image of another size is brought to (H, W): data.resize of the run

    def __post_init__(self) -> None:
        h, w = self.size
        if h <= 2 * self.pad or w <= 2 * self.pad or self.pad < 0:
            raise RichKDError(f"input size {h}x{w} with pad {self.pad} leaves no image")
        if self.resize not in RESIZE_MODES:
            raise RichKDError(f"input resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.color not in ("rgb", "grey"):
            raise RichKDError(f"input colour must be rgb or grey, got {self.color!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise RichKDError(f"mean/std need 3 values each and std > 0 (got {self.mean}, {self.std})")

    def to_dict(self) -> dict[str, Any]:
        h, w = self.size
        ih, iw = h - 2 * self.pad, w - 2 * self.pad
        fit = f"squash to {ih}x{iw}" if self.resize == "squash" else (
            f"shorter side to {min(ih, iw)} px, centre crop {ih}x{iw}"
        )
        return {
            "size": [h, w],
            "channels": 3,
            "color": self.color,
            "pad": self.pad,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": "NCHW float32",
            "resize": self.resize,
            "transform": f"RGB{' -> luma, replicated to 3 channels' if self.color == 'grey' else ''}; {fit}"
            f"{f', zero pad {self.pad}' if self.pad else ''}; x/255; (x - mean) / std per channel",
        }

    @staticmethod
    def from_dict(obj: Any, where: str) -> InputSpec:
        try:
            return InputSpec(
                size=(int(obj["size"][0]), int(obj["size"][1])),
                mean=_triple(obj["mean"]),
                std=_triple(obj["std"]),
                color=obj.get("color", "rgb"),
                pad=int(obj.get("pad", 0)),
                resize=str(obj.get("resize", "shorter")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise RichKDError(f"{where}: its input spec is malformed ({err!r}); re-export the model") from None


def _triple(values: Sequence[Any]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"need 3 values, got {len(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named by `inputs`: files as given, folders searched recursively, globs expanded.

    Order is the order of `inputs`, sorted within a folder or glob; duplicates are kept once. A missing
    path, a glob that matches nothing, or a folder without images is an error (nothing to do for it).
    """
    found: dict[Path, None] = {}
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            images = sorted(_folder_images(path))
            if not images:
                raise RichKDError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            found.update(dict.fromkeys(images))
        elif any(c in raw for c in GLOB_CHARS):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True))
            files = [m for m in matches if m.is_file() and m.name.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                raise RichKDError(f"{raw!r} matches no image files; check the pattern (quote it for the shell)")
            found.update(dict.fromkeys(files))
        else:
            raise RichKDError(f"input {path} does not exist: pass image files, folders or globs")
    if not found:
        raise RichKDError("no input images: pass image files, folders or globs")
    return list(found)


def _folder_images(root: Path) -> list[Path]:
    out: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(Path(folder) / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
    return out


def decode_image(path: Path, spec: InputSpec) -> np.ndarray | str:
    """uint8 [3, H, W] as the model was trained on, or the reason the file cannot be used."""
    h, w = spec.size
    ch, cw = h - 2 * spec.pad, w - 2 * spec.pad
    try:
        blob = path.read_bytes()
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    decoded = decode_images([blob], ch if ch == cw else None, spec.resize)
    if decoded.bad or decoded.images is None:
        return decoded.bad[0][1] if decoded.bad else "cannot decode"
    rgb = decoded.images[0]  # [3, h', w']
    if rgb.shape[1:] != (ch, cw):
        rgb = _cover_crop(rgb, ch, cw)
    if spec.color == "grey":
        r, g, b = (rgb[i].astype(np.uint32) for i in range(3))
        luma = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)  # PIL's RGB -> L
        rgb = np.broadcast_to(luma, (3, ch, cw))
    if spec.pad:
        rgb = np.pad(rgb, ((0, 0), (spec.pad, spec.pad), (spec.pad, spec.pad)))
    return np.ascontiguousarray(rgb)


def _cover_crop(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """Non-square targets: scale to cover h x w, then centre crop (the square case is the training decoder's)."""
    im = Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
    scale = max(h / im.height, w / im.width)
    nw, nh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (nw - w) // 2, (nh - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8).transpose(2, 0, 1)

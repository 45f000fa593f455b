"""Tiny ImageNet-layout data generated in tests: smooth random JPEGs larger than 224 px, as `<split>/<wnid>/*.JPEG`
folders and as WebDataset-style tar shards (shared by the ImageNet loader, training, cache and shift tests)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from richkd.data.stream import FolderSource, write_shards

CLASSES = ("n01440764", "n01443537", "n01484850")


def jpeg_bytes(rng: np.random.Generator, width: int, height: int, grey: bool = False) -> bytes:
    """A smooth random image (JPEG-friendly, so encoding is quick)."""
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    (img.convert("L") if grey else img).save(out, format="JPEG", quality=85)
    return out.getvalue()


def make_split(root: Path, split: str = "train", classes: Sequence[str] = CLASSES, per_class: int = 4,
               seed: int = 0, n_shards: int = 0) -> Path:
    """root/<split>/<wnid>/<wnid>_<i>.JPEG (240-351 px wide, one greyscale image in the 2nd class); with `n_shards`,
    also root/shards/<split>/shard-*.tar. Returns root/<split>."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(classes):
        folder = root / split / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            data = jpeg_bytes(rng, 240 + 37 * (i % 4), 320 - 23 * (i % 4) + c, grey=(c == 1 and i == 2))
            (folder / f"{wnid}_{i:05d}.JPEG").write_bytes(data)
    if n_shards:
        write_shards(FolderSource(root / split), root / "shards" / split, n_shards)
    return root / split

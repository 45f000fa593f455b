"""Fashion-MNIST from the official idx(.gz) files, served as 3x32x32 so CIFAR models run on it unchanged."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from richkd.data.arrays import SPLITS, ArrayDataset
from richkd.data.stats import DATASET_STATS
from richkd.errors import RichKDError

# Debian's dataset-fashion-mnist package installs the official files here.
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
PAD = 2  # 28 -> 32 with zeros, as LeNet-style CIFAR pipelines do


def load_fashion_mnist(root: str | Path | None, split: str) -> ArrayDataset:
    """Load one split; images are zero-padded by 2 px and the grey channel is replicated to 3."""
    if split not in SPLITS:
        raise RichKDError(f"fashion_mnist has no split {split!r}; use one of {', '.join(SPLITS)}")
    folder = Path(root) if root is not None else DEFAULT_ROOT
    prefix = _PREFIX[split]
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"), _IMAGES_MAGIC)
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"), _LABELS_MAGIC)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise RichKDError(f"Fashion-MNIST files in {folder} disagree: images {images.shape}, labels {labels.shape}")
    grey = torch.nn.functional.pad(torch.from_numpy(images), (PAD, PAD, PAD, PAD))  # [N, 32, 32]
    mean, std = DATASET_STATS["fashion_mnist"]
    return ArrayDataset(
        images=grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=CLASSES,
        name="fashion_mnist",
        split=split,
        mean=mean,
        std=std,
        source=str(folder.resolve()),
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an idx file (big-endian header: magic, then one uint32 per dimension, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise RichKDError(f"cannot read {path}: {exc}") from None
    header = np.frombuffer(raw[:4], dtype=">u4")
    if header.size != 1 or int(header[0]) != magic:
        raise RichKDError(f"{path} is not an idx file with magic {magic}; re-download the official files")
    ndim = magic & 0xFF
    dims = tuple(int(d) for d in np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">u4"))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise RichKDError(f"{path} is truncated: header says {dims}, found {data.size} bytes")
    return data.reshape(dims).copy()


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise RichKDError(
        f"Fashion-MNIST file {stem}(.gz) not found under {folder}: pass data.root=<folder of idx files> "
        "or install Debian's dataset-fashion-mnist"
    )

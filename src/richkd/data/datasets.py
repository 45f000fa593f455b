"""`load_dataset`: the one entry point that turns a dataset name + root + split into an ArrayDataset."""

from __future__ import annotations

import os
from pathlib import Path

from richkd.data.arrays import SPLITS, ArrayDataset
from richkd.data.cifar import CIFAR_SPECS, load_cifar
from richkd.data.fashion_mnist import load_fashion_mnist
from richkd.data.folder import FolderOptions, load_imagefolder
from richkd.data.stats import DATASET_STATS
from richkd.errors import RichKDError

__all__ = [
    "DATASET_NAMES", "DATASET_STATS", "SPLITS", "ArrayDataset", "FolderOptions", "default_cache_dir", "load_dataset"
]

DATASET_NAMES = ("cifar10", "cifar100", "fashion_mnist", "imagefolder")


def default_cache_dir() -> Path:
    """$RICHKD_CACHE/datasets when set, else ~/.cache/richkd/datasets (decoded folders, CIFAR downloads)."""
    base = os.environ.get("RICHKD_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "richkd") / "datasets"


def load_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    download: bool = False,
    cache_dir: Path | None = None,
    image_size: int | None = None,
    folder: FolderOptions | None = None,
    test_split: str = "test",
) -> ArrayDataset:
    """Load one split as uint8 tensors in memory.

    name: "cifar10" | "cifar100" (official pickles; root=None means the cache dir, where download=True puts
    them) | "fashion_mnist" (official idx files; root=None means Debian's /usr/share/datasets/fashion-mnist)
    | "imagefolder" (root = folder or .tar/.tar.gz with <split>/<class>/<image>; decoded once into
    cache_dir; image_size resizes every image to a square of that side, otherwise all must match; `folder`
    carries the whole folder policy: resize mode, split fraction, unreadable files, class display names).
    Problems the user can fix (missing files, wrong names) raise RichKDError with a one-line fix.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    opts = folder if folder is not None else FolderOptions(image_size=image_size)
    if name != "imagefolder" and opts != FolderOptions():
        raise RichKDError(
            f"data.image_size, resize, split_fraction, skip_bad and class_names are for imagefolder only (not {name})"
        )
    if opts.image_size is not None and opts.image_size < 1:
        raise RichKDError(f"data.image_size must be >= 1 (got {opts.image_size})")
    if name in CIFAR_SPECS:
        return load_cifar(name, root, split, download=download, default_root=cache)
    if name == "fashion_mnist":
        return load_fashion_mnist(root, split)
    if name == "imagefolder":
        return load_imagefolder(root, split, cache_dir=cache, options=opts, test_split=test_split)
    raise RichKDError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")

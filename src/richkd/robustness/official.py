"""Readers for published robustness sets: the official CIFAR-10-C / CIFAR-100-C folders, and distribution-shift
test sets stored as image folders whose classes must match the model's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from richkd.errors import RichKDError
from richkd.robustness.corruptions import check_corruption

if TYPE_CHECKING:
    from richkd.data import FolderOptions

N_SEVERITIES = 5


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise RichKDError(f"{what} {path} not found: point --official-c at the extracted CIFAR-10-C/CIFAR-100-C folder")
    try:
        array: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RichKDError(f"{what} {path} is not a readable .npy file ({err}); re-download it") from None
    return array


def load_official_c(root: str | Path, corruption: str, severity: int) -> tuple[Tensor, Tensor]:
    """Images uint8 `[N, 3, H, W]` and labels int64 `[N]` of one corruption and severity of an official -C folder.

    Layout: `<root>/<corruption>.npy` uint8 `[5 * N, H, W, 3]` (severities 1..5 stacked, N = 10000 for CIFAR)
    and `<root>/labels.npy` with the 5 * N labels in the same order.
    """
    check_corruption(corruption, severity)
    images, labels = open_official_c(root, corruption)
    n = images.shape[0] // N_SEVERITIES
    block = slice((severity - 1) * n, severity * n)
    x = torch.from_numpy(np.array(images[block], copy=True)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.asarray(labels[block]).astype(np.int64))
    return x, y


def open_official_c(root: str | Path, corruption: str) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped, checked (images, labels) arrays of one corruption: cheap, so a command can check every
    file it will read before its first evaluation."""
    folder = Path(root).expanduser()
    images = _load_npy(folder / f"{corruption}.npy", "corruption file")
    labels = _load_npy(folder / "labels.npy", "labels file")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[0] % N_SEVERITIES:
        raise RichKDError(
            f"{folder / (corruption + '.npy')} holds {images.dtype} {images.shape}; expected uint8 [5*N, H, W, 3] "
            "(five severities stacked): is this an official CIFAR-C file?"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise RichKDError(
            f"{folder / 'labels.npy'} holds {labels.dtype} {labels.shape}; expected {images.shape[0]} integer labels"
        )
    return images, labels


def load_shift_set(
    root: str | Path, split: str, *, classes: tuple[str, ...], image_size: int, cache_dir: Path | None = None,
    folder: FolderOptions | None = None,
) -> tuple[Tensor, Tensor]:
    """Images and labels of a distribution-shift image folder (`<root>/<split>/<class>/<image>`, a folder or
    .tar.gz), resized to `image_size`; its classes must be exactly `classes` (the model's, in order). `folder`: the
    evaluated dataset's folder policy, whose resize rule and `class_names` mapping (folder -> display name) apply
    here too, so a model trained with display names is scored on a shift set of the same class folders."""
    from richkd.data import FolderOptions, load_dataset

    base = folder or FolderOptions()
    options = FolderOptions(image_size=image_size, resize=base.resize, class_names=base.class_names)
    ds = load_dataset("imagefolder", root, split, cache_dir=cache_dir, folder=options)
    if ds.classes != tuple(classes):
        extra = sorted(set(ds.classes) - set(classes))
        missing = sorted(set(classes) - set(ds.classes))
        raise RichKDError(
            f"shift set {root} has classes that differ from the model's (extra: {extra[:5]}, missing: {missing[:5]}"
            f"{', same names in another order' if not extra and not missing else ''}); "
            "rename its class folders to the training class names"
        )
    return ds.images, ds.labels

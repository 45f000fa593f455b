"""CIFAR-10/100 from the official python-pickle archives (never torchvision), with an opt-in download."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from richkd.data.arrays import SPLITS, ArrayDataset
from richkd.data.stats import DATASET_STATS
from richkd.errors import RichKDError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarSpec:
    title: str
    folder: str  # what the official tarball extracts to
    url: str
    md5: str
    files: dict[str, tuple[str, ...]]  # split -> batch files, in official row order
    meta_file: str
    names_key: str
    labels_key: str


CIFAR_SPECS = {
    "cifar10": CifarSpec(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta_file="batches.meta",
        names_key="label_names",
        labels_key="labels",
    ),
    "cifar100": CifarSpec(
        title="CIFAR-100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        files={"train": ("train",), "test": ("test",)},
        meta_file="meta",
        names_key="fine_label_names",
        labels_key="fine_labels",
    ),
}


def load_cifar(name: str, root: str | Path | None, split: str, *, download: bool, default_root: Path) -> ArrayDataset:
    """Load one split of CIFAR-10/100; `root` may hold the extracted folder or be that folder itself."""
    spec = CIFAR_SPECS[name]
    if split not in SPLITS:
        raise RichKDError(f"{name} has no split {split!r}; use one of {', '.join(SPLITS)}")
    base = Path(root).expanduser() if root is not None else default_root
    folder = find_cifar_folder(spec, base)
    if folder is None:
        if not download:
            raise RichKDError(
                f"{spec.title} not found under {base}: pass data.root=<folder holding {spec.folder}> "
                "or data.download=true when online"
            )
        folder = download_cifar(spec, base)
    chunks = [_read_batch(folder / f, spec.labels_key) for f in spec.files[split]]
    meta = _unpickle(folder / spec.meta_file)
    classes = tuple(_text(c) for c in meta[spec.names_key])
    mean, std = DATASET_STATS[name]
    return ArrayDataset(
        images=torch.from_numpy(np.concatenate([c[0] for c in chunks])),
        labels=torch.from_numpy(np.concatenate([c[1] for c in chunks])),
        classes=classes,
        name=name,
        split=split,
        mean=mean,
        std=std,
        source=str(folder.resolve()),
    )


def find_cifar_folder(spec: CifarSpec, base: Path) -> Path | None:
    for candidate in (base / spec.folder, base):
        if all((candidate / f).is_file() for split in SPLITS for f in spec.files[split]):
            if (candidate / spec.meta_file).is_file():
                return candidate
    return None


def _read_batch(path: Path, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 3, 32, 32], int64 [N]) from one pickle; rows are stored as 1024 R, then G, then B bytes."""
    batch = _unpickle(path)
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[labels_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise RichKDError(f"{path} is not an official CIFAR batch (data {data.shape}, labels {labels.shape})")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels


# Only what numpy needs to rebuild arrays: the official files are pickles, and pickles can run code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2 (re-saved copies of the files)
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core") :]  # files written before numpy 2
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise RichKDError(f"cannot read CIFAR file {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise RichKDError(f"{path} is not an official CIFAR pickle (got {type(obj).__name__})")
    return {_text(k): v for k, v in obj.items()}  # the official files are Python 2 pickles with bytes keys


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def download_cifar(spec: CifarSpec, base: Path) -> Path:
    """Fetch the official tarball, check its md5, extract beside it and rename into place (atomic)."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base, prefix=".download-") as tmp:
            archive = Path(tmp) / Path(spec.url).name
            log.info("downloading %s from %s", spec.title, spec.url)
            _fetch(spec.url, archive)
            digest = _md5(archive)
            if digest != spec.md5:
                raise RichKDError(f"{spec.url} has md5 {digest}, not {spec.md5}: retry or download it by hand")
            with tarfile.open(archive, "r:gz") as tf:
                tf.extractall(tmp, filter="data")
            target = base / spec.folder
            if not target.exists():
                os.replace(Path(tmp) / spec.folder, target)
    except urllib.error.URLError as exc:
        raise RichKDError(
            f"could not download {spec.title} from {spec.url} ({exc.reason}): fetch it by hand into {base} "
            "and pass data.root"
        ) from None
    except (OSError, tarfile.TarError) as exc:
        raise RichKDError(f"could not store {spec.title} under {base}: {exc}") from None
    found = find_cifar_folder(spec, base)
    if found is None:
        raise RichKDError(f"the {spec.title} archive did not contain {spec.folder}/ with the expected files")
    return found


def _fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check only
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

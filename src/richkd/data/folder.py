"""Image folders (torchvision ImageFolder layout, as a directory or a .tar/.tar.gz) decoded once into a
uint8 cache on disk, so later runs start in a fraction of a second instead of re-decoding every image."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from richkd.data.arrays import ArrayDataset
from richkd.data.decode import SPLIT_DIRS, decode_tree, default_workers, dir_fingerprint
from richkd.data.stats import compute_mean_std
from richkd.engine.io import save_npy_atomic, write_atomic
from richkd.errors import RichKDError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the cache layout or decoding changes, so stale caches are rebuilt
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def load_imagefolder(
    root: str | Path | None, split: str, *, cache_dir: Path, image_size: int | None = None
) -> ArrayDataset:
    """Load `split` of an image folder, decoding the whole tree (all splits, one read) on first use.

    Classes are the sorted union of class-folder names over all splits, so a split that lacks a class keeps
    the same label indices. Rows are in sorted relative-path order. Stats come from the train split.
    """
    if root is None:
        raise RichKDError("imagefolder needs data.root: a folder or .tar/.tar.gz with train/<class>/<image>")
    source = Path(root).expanduser().resolve()
    if not source.exists():
        raise RichKDError(f"image folder {source} does not exist: pass data.root=<folder or .tar.gz>")
    if not source.is_dir() and not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise RichKDError(f"{source} is neither a folder nor a .tar/.tar.gz archive")
    entry = cache_dir / cache_key(source, image_size)
    fingerprint = source_fingerprint(source)
    meta = _read_meta(entry, str(source), fingerprint, image_size)
    loaded = _load_split(entry, split, meta) if meta is not None and split in meta["splits"] else None
    if meta is None or (loaded is None and split in meta["splits"]):  # missing, stale or damaged: rebuild
        meta = build_cache(source, entry, fingerprint, image_size)
        loaded = _load_split(entry, split, meta) if split in meta["splits"] else None
    if split not in meta["splits"]:
        raise RichKDError(f"{source} has no {split}/ split; found: {', '.join(meta['splits'])}")
    if loaded is None:
        raise RichKDError(f"the dataset cache {entry} is unreadable right after writing: delete it and retry")
    images, labels = loaded
    return ArrayDataset(
        images=images,
        labels=labels,
        classes=tuple(meta["classes"]),
        name="imagefolder",
        split=split,
        mean=_triple(meta["mean"]),
        std=_triple(meta["std"]),
        source=str(source),
    )


def cache_key(source: Path, image_size: int | None) -> str:
    """One cache entry per (absolute source path, resize): readable stem plus a hash against collisions."""
    digest = hashlib.sha1(f"{source}|{image_size}".encode(), usedforsecurity=False).hexdigest()[:12]
    stem = source.name.split(".")[0] or "root"
    return f"imagefolder-{stem}-{digest}" + (f"-{image_size}px" if image_size else "")


def source_fingerprint(source: Path) -> dict[str, int]:
    if source.is_dir():
        return dir_fingerprint(source)
    st = source.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_cache(source: Path, entry: Path, fingerprint: dict[str, int], image_size: int | None) -> dict[str, Any]:
    """Decode the tree, then write every split's arrays and finally meta.json (the commit marker)."""
    log.info("decoding %s into %s (once)", source, entry)
    start = time.perf_counter()
    splits = decode_tree(source, image_size=image_size, workers=default_workers())
    if not splits:
        raise RichKDError(
            f"no images found in {source}: expected {'/ or '.join(SPLIT_DIRS)}/ folders with <class>/<image>"
        )
    shapes = {split.images.shape[1:] for split in splits.values()}
    if len(shapes) > 1:
        sizes = ", ".join(f"{name} {s.images.shape[3]}x{s.images.shape[2]}" for name, s in splits.items())
        raise RichKDError(f"splits of {source} have different image sizes ({sizes}); pass data.image_size=<pixels>")
    classes = sorted({path.split("/")[0] for split in splits.values() for path in split.paths})
    index = {name: i for i, name in enumerate(classes)}
    stats_split = "train" if "train" in splits else sorted(splits)[0]
    mean, std = compute_mean_std(splits[stats_split].images)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for name, split in splits.items():
            labels = np.asarray([index[p.split("/")[0]] for p in split.paths], dtype=np.int64)
            _write_atomic(entry / f"{name}.images.npy", split.images)
            _write_atomic(entry / f"{name}.labels.npy", labels)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": str(source),
            "fingerprint": fingerprint,
            "image_size": image_size,
            "classes": classes,
            "splits": {name: len(split.paths) for name, split in splits.items()},
            "image_shape": list(next(iter(splits.values())).images.shape[1:]),
            "mean": list(mean),
            "std": list(std),
            "stats_split": stats_split,
            "decode_seconds": round(time.perf_counter() - start, 2),
        }
        _write_atomic(entry / "meta.json", json.dumps(meta, indent=1).encode())
    except OSError as exc:
        raise RichKDError(f"cannot write the dataset cache {entry} ({exc}): set data.cache_dir") from None
    log.info("decoded %s in %.1f s", source, meta["decode_seconds"])
    return meta


def _read_meta(entry: Path, source: str, fingerprint: dict[str, int], image_size: int | None) -> dict[str, Any] | None:
    """The cache's meta.json if it describes this exact source; None means (re)build."""
    try:
        meta: dict[str, Any] = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    expected = {"format_version": FORMAT_VERSION, "source": source, "fingerprint": fingerprint}
    if any(meta.get(k) != v for k, v in expected.items()) or meta.get("image_size") != image_size:
        log.info("dataset cache %s is stale; rebuilding", entry)
        return None
    return meta


def _load_split(entry: Path, split: str, meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    n = meta["splits"][split]
    try:
        images = np.load(entry / f"{split}.images.npy")
        labels = np.load(entry / f"{split}.labels.npy")
    except (OSError, ValueError) as exc:
        log.warning("dataset cache %s is unreadable (%s); rebuilding", entry, exc)
        return None
    if images.shape != (n, *meta["image_shape"]) or images.dtype != np.uint8 or labels.shape != (n,):
        log.warning("dataset cache %s does not match its meta.json; rebuilding", entry)
        return None
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64, copy=False))


def _write_atomic(path: Path, data: bytes | np.ndarray) -> None:
    """richkd.engine.io.write_atomic (temp file + fsync + rename): readers never see a half-written file, even
    when several processes (e.g. DDP ranks) build the same cache at once."""
    if isinstance(data, np.ndarray):
        save_npy_atomic(path, data)
    else:
        write_atomic(path, lambda fh: fh.write(data))


def _triple(values: list[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))

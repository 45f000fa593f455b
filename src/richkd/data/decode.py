"""Decode an image-folder tree (a directory or a tar archive) into uint8 arrays, in parallel, without
extracting anything to disk. numpy + PIL only: the workers never touch torch."""

from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import sys
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from richkd.engine.proc import die_with_parent
from richkd.errors import RichKDError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_DIRS = ("train", "val", "test")
CHUNK = 512  # images per decode task: large enough to amortise pickling, small enough to balance


class SplitImages(NamedTuple):
    """A split's images in sorted relative-path order; `paths` are "<class>/<...>/<file>"."""

    paths: list[str]
    images: np.ndarray  # uint8 [N, 3, H, W]


Pending = list[tuple[str, list[str], "cf.Future[np.ndarray | tuple[int, str]]"]]


def decode_tree(source: Path, *, image_size: int | None, workers: int) -> dict[str, SplitImages]:
    """Read every image under <split>/<class>/ of `source` and decode it; rows come back sorted by path.

    Reading stays in this process (a tar.gz is one sequential stream) while full chunks are decoded by a
    process pool, so gunzip and JPEG decoding overlap.
    """
    executors: list[cf.Executor] = []
    try:
        return _assemble(_submit_all(source, image_size, workers, executors), source)
    finally:
        for executor in executors:
            executor.shutdown(cancel_futures=True)


def _submit_all(source: Path, image_size: int | None, workers: int, executors: list[cf.Executor]) -> Pending:
    """Stream the tree into per-split chunks and hand each full chunk to the pool (created on first need)."""
    buffers: dict[str, tuple[list[str], list[bytes]]] = {}
    pending: Pending = []

    def flush(split: str) -> None:
        chunk_names, chunk_blobs = buffers.pop(split)
        if not executors and len(chunk_blobs) + sum(len(p[1]) for p in pending) < CHUNK:
            # a small tree (tests, toy sets): starting a pool would cost more than it saves
            future: cf.Future[np.ndarray | tuple[int, str]] = cf.Future()
            future.set_result(decode_chunk(chunk_blobs, image_size))
        else:
            if not executors:
                executors.append(_make_executor(workers))
            future = executors[0].submit(decode_chunk, chunk_blobs, image_size)
        pending.append((split, chunk_names, future))

    for split, rel, blob in _iter_images(source):
        chunk_names, chunk_blobs = buffers.setdefault(split, ([], []))
        chunk_names.append(rel)
        chunk_blobs.append(blob)
        if len(chunk_blobs) >= CHUNK:
            flush(split)
    for split in list(buffers):
        flush(split)
    return pending


def _assemble(pending: Pending, source: Path) -> dict[str, SplitImages]:
    """Place each decoded chunk straight at its sorted rows (no concatenate-then-permute copy)."""
    names: dict[str, list[str]] = {}
    for split, chunk, _ in pending:
        names.setdefault(split, []).extend(chunk)
    rows: dict[str, np.ndarray] = {}  # arrival position -> sorted row
    for split, paths in names.items():
        order = np.asarray(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.int64)
        rows[split] = np.empty_like(order)
        rows[split][order] = np.arange(len(order))
    out: dict[str, np.ndarray] = {}
    filled = dict.fromkeys(names, 0)
    for split, chunk, future in pending:
        images = _checked(future.result(), chunk, source)
        if split not in out:
            out[split] = np.empty((len(names[split]), *images.shape[1:]), dtype=np.uint8)
        elif out[split].shape[1:] != images.shape[1:]:
            sizes = f"{images.shape[3]}x{images.shape[2]} and {out[split].shape[3]}x{out[split].shape[2]}"
            raise RichKDError(f"images in {source} have different sizes ({sizes}); pass data.image_size=<pixels>")
        start = filled[split]
        out[split][rows[split][start : start + len(chunk)]] = images
        filled[split] = start + len(chunk)
    return {split: SplitImages(paths=sorted(names[split]), images=out[split]) for split in names}


def decode_chunk(blobs: list[bytes], image_size: int | None) -> np.ndarray | tuple[int, str]:
    """uint8 [k, 3, H, W] for encoded images of one size; on failure (index, reason) so the caller can name
    the file (a worker does not know file names, and exceptions that cross processes lose context)."""
    out: list[np.ndarray] = []
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                array = np.asarray(_resize(rgb, image_size) if image_size else rgb, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return i, f"cannot decode: {exc}"
        if out and array.shape != out[0].shape:
            return i, (
                f"is {array.shape[1]}x{array.shape[0]} but others are {out[0].shape[1]}x{out[0].shape[0]}; "
                "pass data.image_size=<pixels> to resize all"
            )
        out.append(array)
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))


def _resize(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then a centre square crop (the usual eval transform)."""
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _checked(result: np.ndarray | tuple[int, str], chunk: list[str], source: Path) -> np.ndarray:
    if isinstance(result, tuple):
        index, reason = result
        raise RichKDError(f"{chunk[index]} in {source} {reason}")
    return result


def _iter_images(source: Path) -> Iterator[tuple[str, str, bytes]]:
    if source.is_dir():
        for rel in sorted(_dir_images(source)):
            split, _, rest = rel.partition("/")
            yield split, rest, (source / rel).read_bytes()
        return
    try:
        with tarfile.open(source, "r|*") as tf:
            for member in tf:
                parsed = split_member(member.name) if member.isfile() else None
                handle = tf.extractfile(member) if parsed else None
                if parsed and handle is not None:
                    yield parsed[0], parsed[1], handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RichKDError(
            f"{source} is not a readable tar archive ({reason}): is it truncated or of another format? "
            "Download it again, or pass the extracted folder"
        ) from None


def split_member(name: str) -> tuple[str, str] | None:
    """("train", "cat/001.jpg") for ".../train/cat/001.jpg"; None for anything that is not a class image."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or parts[-1].startswith(".") or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
        return None  # hidden files include macOS "._x.jpg" resource forks inside tars
    for i, part in enumerate(parts[:-2]):
        if part in SPLIT_DIRS:
            return part, "/".join(parts[i + 1 :])
    return None


def _dir_images(root: Path) -> Iterator[str]:
    """Relative posix paths "<split>/<class>/.../<file>" of the images under a directory tree."""
    for split in SPLIT_DIRS:
        for folder, dirs, files in os.walk(root / split, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel_folder = Path(folder).relative_to(root).as_posix()
            for name in files:
                rel = f"{rel_folder}/{name}"
                if split_member(rel) is not None:
                    yield rel


def dir_fingerprint(root: Path) -> dict[str, int]:
    """Count, total size and newest mtime of a folder's images: a folder's own mtime misses edits inside."""
    count = size = newest = 0
    for rel in _dir_images(root):
        st = (root / rel).stat()
        count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return {"files": count, "size": size, "mtime_ns": newest}


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def _make_executor(workers: int) -> cf.Executor:
    # fork on Linux: no re-import of the caller's __main__ (spawn would re-run unguarded user scripts), and
    # children only run PIL. Elsewhere threads: Pillow drops the GIL while decoding.
    if sys.platform == "linux" and workers > 1:
        return cf.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=die_with_parent,  # a SIGKILLed parent leaves no decode workers behind
            initargs=(os.getpid(),),
        )
    return cf.ThreadPoolExecutor(max(1, workers))

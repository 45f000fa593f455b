"""Decode an image-folder tree (a directory, tar or zip archive) into uint8 arrays, in parallel, without
extracting anything to disk. numpy + PIL only: the workers never touch torch. One read finds every problem:
undecodable files and mixed sizes are collected and returned, not raised at the first one."""

from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from richkd.engine.proc import die_with_parent
from richkd.errors import RichKDError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_DIRS = ("train", "val", "test")
UNSPLIT = "all"  # the split name of a folder of class folders with no train/val/test level
RESIZE_MODES = ("shorter", "squash")
CHUNK = 512  # images per decode task: large enough to amortise pickling, small enough to balance


class SplitImages(NamedTuple):
    """A split's decodable images in sorted relative-path order; `paths` are "<class>/<...>/<file>"."""

    paths: list[str]
    images: np.ndarray  # uint8 [N, 3, H, W]


class Decoded(NamedTuple):
    """One chunk's outcome. `images` stacks the decodable rows (`good`, in order) when they share one size;
    `bad` names the undecodable ones with the reason; `sizes` counts each decoded (width, height) and the first
    row of that size, so a mixed-size folder is reported in one line."""

    images: np.ndarray | None
    good: list[int]
    bad: list[tuple[int, str]]
    sizes: dict[tuple[int, int], tuple[int, int]]  # (w, h) -> (count, first index)


class DecodedTree(NamedTuple):
    """Everything one read of a tree yields: the splits, every unreadable file, the class folders seen (an
    empty one has no image rows) and, when image sizes differ with no resize, each size with a file of it."""

    splits: dict[str, SplitImages]
    bad: list[tuple[str, str]]  # ("<split>/<class>/<file>", reason), sorted
    class_dirs: dict[str, set[str]]  # split -> class folder names seen, with or without images
    sizes: dict[tuple[int, int], tuple[int, str]]  # (w, h) -> (count, example path); > 1 entry = mixed


Pending = list[tuple[str, list[str], "cf.Future[Decoded]"]]


def decode_tree(
    source: Path, *, image_size: int | None, workers: int, resize: str = "shorter"
) -> DecodedTree:
    """Read every image under <split>/<class>/ (or <class>/ when there is no split level) of `source` and
    decode it; rows come back sorted by path. Undecodable files are collected, not fatal: the caller decides.

    Reading stays in this process (a tar.gz is one sequential stream) while full chunks are decoded by a
    process pool, so gunzip and JPEG decoding overlap.
    """
    if resize not in RESIZE_MODES:
        raise RichKDError(f"data.resize must be one of {', '.join(RESIZE_MODES)} (got {resize!r})")
    executors: list[cf.Executor] = []
    class_dirs: dict[str, set[str]] = {}
    try:
        pending = _submit_all(source, image_size, resize, workers, executors, class_dirs)
        return _assemble(pending, class_dirs)
    finally:
        for executor in executors:
            executor.shutdown(cancel_futures=True)


def _submit_all(
    source: Path, image_size: int | None, resize: str, workers: int, executors: list[cf.Executor],
    class_dirs: dict[str, set[str]],
) -> Pending:
    """Stream the tree into per-split chunks and hand each full chunk to the pool (created on first need)."""
    buffers: dict[str, tuple[list[str], list[bytes]]] = {}
    pending: Pending = []

    def flush(split: str) -> None:
        chunk_names, chunk_blobs = buffers.pop(split)
        if not executors and len(chunk_blobs) + sum(len(p[1]) for p in pending) < CHUNK:
            # a small tree (tests, toy sets): starting a pool would cost more than it saves
            future: cf.Future[Decoded] = cf.Future()
            future.set_result(decode_images(chunk_blobs, image_size, resize))
        else:
            if not executors:
                executors.append(_make_executor(workers))
            future = executors[0].submit(decode_images, chunk_blobs, image_size, resize)
        pending.append((split, chunk_names, future))

    for split, rel, blob in _iter_images(source, class_dirs):
        chunk_names, chunk_blobs = buffers.setdefault(split, ([], []))
        chunk_names.append(rel)
        chunk_blobs.append(blob)
        if len(chunk_blobs) >= CHUNK:
            flush(split)
    for split in list(buffers):
        flush(split)
    return pending


def _assemble(pending: Pending, class_dirs: dict[str, set[str]]) -> DecodedTree:
    """Place each decoded chunk straight at its sorted rows (no concatenate-then-permute copy)."""
    results = [(split, chunk, future.result()) for split, chunk, future in pending]
    bad = sorted((_shown(split, chunk[i]), reason) for split, chunk, r in results for i, reason in r.bad)
    sizes: dict[tuple[int, int], tuple[int, str]] = {}
    for split, chunk, r in results:
        for wh, (count, first) in r.sizes.items():
            old = sizes.get(wh, (0, _shown(split, chunk[first])))
            sizes[wh] = (old[0] + count, old[1])
    if len(sizes) > 1:
        return DecodedTree({}, bad, class_dirs, sizes)
    names: dict[str, list[str]] = {}
    for split, chunk, r in results:
        names.setdefault(split, []).extend(chunk[i] for i in r.good)
    rows: dict[str, np.ndarray] = {}  # arrival position -> sorted row
    for split, paths in names.items():
        order = np.asarray(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.int64)
        rows[split] = np.empty_like(order)
        rows[split][order] = np.arange(len(order))
    out: dict[str, np.ndarray] = {}
    filled = dict.fromkeys(names, 0)
    for split, _, r in results:
        if r.images is None:
            continue
        if split not in out:
            out[split] = np.empty((len(names[split]), *r.images.shape[1:]), dtype=np.uint8)
        start = filled[split]
        out[split][rows[split][start : start + len(r.good)]] = r.images
        filled[split] = start + len(r.good)
    splits = {split: SplitImages(sorted(names[split]), out[split]) for split in names if split in out}
    return DecodedTree(splits, bad, class_dirs, sizes)


def _shown(split: str, rel: str) -> str:
    """A file's path as the user sees it: relative to data.root."""
    return rel if split == UNSPLIT else f"{split}/{rel}"


def decode_images(blobs: list[bytes], image_size: int | None, resize: str = "shorter") -> Decoded:
    """Decode every blob (worker side: plain values only, so results cross processes whole); a failure is
    recorded with its reason and decoding goes on, so one pass finds every unreadable file."""
    arrays: list[np.ndarray] = []
    good: list[int] = []
    bad: list[tuple[int, str]] = []
    sizes: dict[tuple[int, int], tuple[int, int]] = {}
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as opened:
                rgb = to_rgb(opened)
                if image_size:
                    rgb = _squash(rgb, image_size) if resize == "squash" else _resize(rgb, image_size)
                array = np.asarray(rgb, dtype=np.uint8)
        except UnidentifiedImageError:
            bad.append((i, "not an image PIL can read"))
            continue
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            bad.append((i, f"cannot decode: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
            continue
        wh = (int(array.shape[1]), int(array.shape[0]))
        count, first = sizes.get(wh, (0, i))
        sizes[wh] = (count + 1, first)
        arrays.append(array)
        good.append(i)
    stacked = None
    if arrays and len(sizes) == 1:
        stacked = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))
    return Decoded(stacked, good, bad, sizes)


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB as a viewer shows it: EXIF orientation applied; transparency (RGBA, LA, palette or tRNS) composited
    onto white rather than dropped to whatever colour the hidden pixels hold; greyscale, CMYK, 16-bit and
    palette images converted by PIL."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")  # 16-bit greyscale: keep the top 8 bits
    return im if im.mode == "RGB" else im.convert("RGB")


def _resize(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then a centre square crop (the usual eval transform)."""
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _squash(im: Image.Image, size: int) -> Image.Image:
    """The whole picture to size x size, aspect ratio not kept (nothing cropped away)."""
    return im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)


def _iter_images(source: Path, class_dirs: dict[str, set[str]]) -> Iterator[tuple[str, str, bytes]]:
    """(split, "<class>/.../<file>", bytes) of every image file, recording class folders in `class_dirs`.

    A tree with a train/val/test level anywhere gives those splits; one without is a folder of class folders
    (split UNSPLIT), below the longest folder prefix every file shares (an archive often wraps one folder)."""
    if source.is_dir():
        has_splits = any((source / s).is_dir() for s in SPLIT_DIRS)
        for split in SPLIT_DIRS if has_splits else ("",):
            base = source / split if split else source
            if base.is_dir():
                names = class_dirs.setdefault(split or UNSPLIT, set())
                names.update(p.name for p in base.iterdir() if p.is_dir() and not _hidden(p.name))
        for rel in sorted(_dir_images(source, has_splits)):
            if has_splits:
                split, _, rest = rel.partition("/")
                yield split, rest, (source / rel).read_bytes()
            else:
                yield UNSPLIT, rel, (source / rel).read_bytes()
        return
    unsplit: list[tuple[list[str], bytes | None]] = []  # kept until the archive turns out to have no split level
    seen_split = False
    for parts, blob in _archive_entries(source):
        parsed = _with_split([*parts, "x.jpg"] if blob is None else parts)
        if parsed is None:
            unsplit.append((parts, blob))
            continue
        split, rel = parsed
        if blob is None:
            if rel.count("/") == 1:  # <split>/<class>/ itself
                class_dirs.setdefault(split, set()).add(rel.split("/")[0])
            continue
        seen_split = True
        class_dirs.setdefault(split, set()).add(rel.split("/")[0])
        yield split, rel, blob
    if seen_split:
        return
    files = [(parts, blob) for parts, blob in unsplit if blob is not None and len(parts) >= 2]
    prefix = _common_prefix([parts[:-1] for parts, _ in files])
    found = class_dirs.setdefault(UNSPLIT, set())
    for parts, blob in unsplit:
        if blob is None and len(parts) == len(prefix) + 1 and parts[: len(prefix)] == prefix:
            found.add(parts[-1])
    for parts, blob in files:
        tail = parts[len(prefix) :]
        if len(tail) >= 2 and blob is not None:
            found.add(tail[0])
            yield UNSPLIT, "/".join(tail), blob


def _common_prefix(paths: list[list[str]]) -> list[str]:
    if not paths:
        return []
    prefix = paths[0]
    for parts in paths[1:]:
        n = 0
        while n < min(len(prefix), len(parts)) and prefix[n] == parts[n]:
            n += 1
        prefix = prefix[:n]
    # keep the class level: a prefix as deep as every file's folder would swallow the class name
    return prefix[: min(len(p) for p in paths) - 1] if len(prefix) >= min(len(p) for p in paths) else prefix


def _archive_entries(source: Path) -> Iterator[tuple[list[str], bytes | None]]:
    """(path parts, bytes) of each visible image file of a tar or zip archive; (parts, None) for its folders."""
    try:
        if source.name.lower().endswith(".zip"):
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    parts = _parts(info.filename)
                    if parts is None:
                        continue
                    if info.is_dir():
                        yield parts, None
                    elif _is_image(parts[-1]):
                        yield parts, zf.read(info)
            return
        with tarfile.open(source, "r|*") as tf:
            for member in tf:
                parts = _parts(member.name)
                if parts is None:
                    continue
                if member.isdir():
                    yield parts, None
                elif member.isfile() and _is_image(parts[-1]):
                    handle = tf.extractfile(member)
                    if handle is not None:
                        yield parts, handle.read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RichKDError(
            f"{source} is not a readable tar or zip archive ({reason}): is it truncated or of another format? "
            "Download it again, or pass the extracted folder"
        ) from None


def _parts(name: str) -> list[str] | None:
    """Path parts of an archive member; None for hidden ones (a dot-folder or file, macOS __MACOSX/ and ._x)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(_hidden(p) for p in parts):
        return None
    return parts


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _with_split(parts: list[str]) -> tuple[str, str] | None:
    for i, part in enumerate(parts[:-2]):
        if part in SPLIT_DIRS:
            return part, "/".join(parts[i + 1 :])
    return None


def split_member(name: str) -> tuple[str, str] | None:
    """("train", "cat/001.jpg") for ".../train/cat/001.jpg"; None for anything that is not a class image."""
    parts = _parts(name)
    if parts is None or not _is_image(parts[-1]):
        return None  # hidden files include macOS "._x.jpg" resource forks inside tars
    return _with_split(parts)


def _dir_images(root: Path, has_splits: bool = True) -> Iterator[str]:
    """Relative posix paths "[<split>/]<class>/.../<file>" of the visible images under a directory tree."""
    for base in [root / s for s in SPLIT_DIRS] if has_splits else [root]:
        for folder, dirs, files in os.walk(base, followlinks=True):
            dirs[:] = [d for d in dirs if not _hidden(d)]
            rel_folder = Path(folder).relative_to(root).as_posix()
            depth = 0 if rel_folder == "." else rel_folder.count("/") + 1
            if depth < (2 if has_splits else 1):
                continue  # files beside the class folders belong to no class
            for name in files:
                if not _hidden(name) and _is_image(name):
                    yield f"{rel_folder}/{name}"


def dir_fingerprint(root: Path) -> dict[str, int]:
    """Count, total size and newest mtime of a folder's images: a folder's own mtime misses edits inside."""
    count = size = newest = 0
    has_splits = any((root / s).is_dir() for s in SPLIT_DIRS)
    for rel in _dir_images(root, has_splits):
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

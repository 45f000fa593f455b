"""Image folders (torchvision ImageFolder layout, as a directory or a .tar/.tar.gz) decoded once into a
uint8 cache on disk, so later runs start in a fraction of a second instead of re-decoding every image."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from richkd.data.arrays import ArrayDataset
from richkd.data.decode import RESIZE_MODES, SPLIT_DIRS, UNSPLIT, decode_tree, default_workers, dir_fingerprint
from richkd.data.stats import compute_mean_std
from richkd.data.valsplit import val_split_rows
from richkd.engine.io import save_npy_atomic, write_atomic
from richkd.errors import RichKDError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the cache layout or decoding changes, so stale caches are rebuilt
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
BAD_SHOWN = 3  # unreadable files named in the one-line error; the full list goes to a file
_WARNED: set[str] = set()  # dataset caches whose skipped files were already logged by this process


@dataclass(frozen=True)
class FolderOptions:
    """How an image folder becomes a dataset: the same values in every command that reads it (train, eval,
    vlm cache, teacher cache, robustness), so rows, sizes and class names agree with the caches built from it.

    image_size: side of the square every image is resized to (None: all images must already share one size).
    resize: "shorter" (shorter side to image_size, then a centre crop) or "squash" (the whole image, aspect
    ratio not kept). split_fraction: when the folder has no <test split>/ folder, this seeded, stratified
    fraction of the images (of train/, or of a folder of class folders) is held out as the test split.
    skip_bad: train on the decodable images instead of refusing a folder with unreadable files.
    class_names: a 2-column TSV/CSV or YAML mapping file, folder name -> display name (prompts, reports).
    """

    image_size: int | None = None
    resize: str = "shorter"
    split_fraction: float | None = None
    split_seed: int = 0
    skip_bad: bool = False
    class_names: str | None = None


def folder_options(values: Mapping[str, Any]) -> FolderOptions:
    """FolderOptions from data.* values (a run's config.yaml, CLI options); absent keys take the defaults."""
    def opt(key: str, kind: type) -> Any:
        value = values.get(key)
        if value is None:
            return getattr(FolderOptions, key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RichKDError(f"data.{key} must be a {kind.__name__} (got {value!r})")
        return value

    fraction = values.get("split_fraction")
    return FolderOptions(
        image_size=opt("image_size", int), resize=opt("resize", str),
        split_fraction=float(fraction) if isinstance(fraction, (int, float)) and fraction is not True else None,
        split_seed=opt("split_seed", int), skip_bad=opt("skip_bad", bool), class_names=opt("class_names", str),
    )


def load_imagefolder(
    root: str | Path | None,
    split: str,
    *,
    cache_dir: Path,
    image_size: int | None = None,
    options: FolderOptions | None = None,
    test_split: str = "test",
) -> ArrayDataset:
    """Load `split` of an image folder, decoding the whole tree (all splits, one read) on first use.

    Classes are the sorted union of class-folder names over all splits, so a split that lacks a class keeps
    the same label indices. Rows are in sorted relative-path order. Stats come from the train split. With
    `options.split_fraction`, a folder without `test_split`/ is split into train and `test_split` here (the
    cache holds the unsplit rows, so another fraction or seed needs no new decode).
    """
    opts = options if options is not None else FolderOptions(image_size=image_size)
    if root is None:
        raise RichKDError("imagefolder needs data.root: a folder, .tar/.tar.gz or .zip of <class>/<image> folders")
    source = Path(root).expanduser().resolve()
    if not source.exists():
        raise RichKDError(f"image folder {source} does not exist: pass data.root=<folder, .tar.gz or .zip>")
    if not source.is_dir() and not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise RichKDError(f"{source} is neither a folder nor a .tar/.tar.gz/.zip archive")
    if opts.resize not in RESIZE_MODES:
        raise RichKDError(f"data.resize must be one of {', '.join(RESIZE_MODES)} (got {opts.resize!r})")
    entry = cache_dir / cache_key(source, opts.image_size, opts.resize)
    fingerprint = source_fingerprint(source)
    meta = _read_meta(entry, str(source), fingerprint, opts.image_size, opts.resize)
    if meta is None or not all(_readable(entry, name, meta) for name in meta["splits"]):
        meta = build_cache(source, entry, fingerprint, opts.image_size, opts.resize)
    _check_bad(meta, source, entry, opts.skip_bad)
    holdout = opts.split_fraction is not None and test_split not in meta["splits"]
    base = (UNSPLIT if UNSPLIT in meta["splits"] else "train") if holdout else split
    if UNSPLIT in meta["splits"] and not holdout:
        raise RichKDError(
            f"{source} has no train/ and {test_split}/ folders (it is one folder of class folders): pass "
            "data.split_fraction=0.2 (CLI: --split-fraction 0.2) to hold out a seeded, stratified 20% as the test split"
        )
    if base not in meta["splits"]:
        raise RichKDError(
            f"{source} has no {split}/ split; found: {', '.join(meta['splits'])}"
            + ("" if opts.split_fraction is not None
               else "; or pass data.split_fraction=0.2 (CLI: --split-fraction 0.2) to hold out 20% of train/")
        )
    loaded = _load_split(entry, base, meta)
    if loaded is None:  # damaged (e.g. a truncated .npy): rebuild once
        meta = build_cache(source, entry, fingerprint, opts.image_size, opts.resize)
        loaded = _load_split(entry, base, meta)
    if loaded is None:
        raise RichKDError(f"the dataset cache {entry} is unreadable right after writing: delete it and retry")
    images, labels = loaded
    mean, std = _triple(meta["mean"]), _triple(meta["std"])
    if holdout:
        if split not in ("train", test_split):
            raise RichKDError(f"with data.split_fraction the splits are train and {test_split}, not {split!r}")
        assert opts.split_fraction is not None
        rows = holdout_rows(labels, opts.split_fraction, opts.split_seed)[0 if split == "train" else 1]
        images, labels = images[rows].contiguous(), labels[rows].contiguous()
        # stats of the held-in rows only: the held-out test rows stay unseen
        mean, std = compute_mean_std(images.numpy()) if split == "train" else _held_in_stats(entry, base, meta, opts)
    return ArrayDataset(
        images=images,
        labels=labels,
        classes=display_names(meta["classes"], opts.class_names),
        name="imagefolder",
        split=split,
        mean=mean,
        std=std,
        source=str(source),
    )


def folder_report(
    root: str | Path, *, cache_dir: Path, options: FolderOptions, test_split: str = "test"
) -> dict[str, Any]:
    """What run.json records about a folder: resize policy, split rule and the unreadable files skipped."""
    source = Path(root).expanduser().resolve()
    meta = _read_meta(
        cache_dir / cache_key(source, options.image_size, options.resize), str(source),
        source_fingerprint(source), options.image_size, options.resize,
    ) or {}
    splits = meta.get("splits", {})
    holdout = options.split_fraction is not None and test_split not in splits
    base = "images" if UNSPLIT in splits else "train/ images"
    return {
        "image_size": options.image_size,
        "native_size": meta.get("image_shape", [None, None, None])[1:] if options.image_size is None else None,
        "resize": options.resize if options.image_size else None,
        "split": (
            {"rule": f"seeded stratified hold-out of the {base} rows as {test_split}: per class "
             "round-half-up(fraction * n_c), at most n_c - 1, drawn by torch.randperm seeded with data.split_seed",
             "fraction": options.split_fraction, "seed": options.split_seed}
            if holdout else "folders"
        ),
        "class_names": options.class_names,
        "skipped_bad_files": [{"path": p, "reason": r} for p, r in meta.get("bad", [])] if options.skip_bad else [],
    }


def holdout_rows(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, test rows) of a folder split by `data.split_fraction`: the same rule as data.val_split."""
    if not 0.0 < fraction < 1.0:
        raise RichKDError(f"data.split_fraction must be a fraction in (0, 1) (got {fraction})")
    return val_split_rows(labels, fraction, seed)


def _held_in_stats(entry: Path, base: str, meta: dict[str, Any], opts: FolderOptions) -> tuple[
    tuple[float, float, float], tuple[float, float, float]
]:
    loaded = _load_split(entry, base, meta)
    assert loaded is not None and opts.split_fraction is not None
    images, labels = loaded
    keep = holdout_rows(labels, opts.split_fraction, opts.split_seed)[0]
    return compute_mean_std(images[keep].numpy())


def display_names(folders: list[str], path: str | None) -> tuple[str, ...]:
    """Class names in label order: the folder names, or their display names from `data.class_names`."""
    if path is None:
        return tuple(folders)
    mapping = read_class_names(Path(path))
    unknown = sorted(set(mapping) - set(folders))
    if unknown:
        raise RichKDError(
            f"data.class_names {path} names folders that are not classes: {', '.join(unknown[:5])}; "
            f"the class folders are {', '.join(folders[:10])}"
        )
    names = tuple(mapping.get(f, f) for f in folders)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RichKDError(f"data.class_names {path} gives several classes the same name: {', '.join(dup)}")
    return names


def read_class_names(path: Path) -> dict[str, str]:
    """folder -> display name from a YAML mapping (.yaml/.yml) or 2-column TSV/CSV; parsed as data only."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RichKDError(f"cannot read data.class_names {path} ({exc}): pass a TSV/CSV or YAML file") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RichKDError(f"data.class_names {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, (str, int, float)) for v in loaded.values()):
            raise RichKDError(f"data.class_names {path} must be a YAML mapping folder: display name")
        return {str(k): str(v).strip() for k, v in loaded.items()}
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        row = next(csv.reader([line], delimiter="\t" if "\t" in line else ","))
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise RichKDError(
                f"data.class_names {path} line {number}: expected 2 columns, folder<TAB or comma>display name"
            )
        out[row[0].strip()] = row[1].strip()
    return out


def cache_key(source: Path, image_size: int | None, resize: str = "shorter") -> str:
    """One cache entry per (absolute source path, resize): readable stem plus a hash against collisions."""
    policy = f"{image_size}" if resize == "shorter" else f"{image_size}|{resize}"
    digest = hashlib.sha1(f"{source}|{policy}".encode(), usedforsecurity=False).hexdigest()[:12]
    stem = source.name.split(".")[0] or "root"
    tail = (f"-{image_size}px" if image_size else "") + (f"-{resize}" if image_size and resize != "shorter" else "")
    return f"imagefolder-{stem}-{digest}" + tail


def source_fingerprint(source: Path) -> dict[str, int]:
    if source.is_dir():
        return dir_fingerprint(source)
    st = source.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_cache(
    source: Path, entry: Path, fingerprint: dict[str, int], image_size: int | None, resize: str = "shorter"
) -> dict[str, Any]:
    """Decode the tree, then write every split's arrays and finally meta.json (the commit marker). Unreadable
    files are recorded in meta.json (the decodable rows are cached, so data.skip_bad=true needs no new decode);
    mixed sizes without data.image_size and empty class folders are refused before anything is written."""
    log.info("decoding %s into %s (once)", source, entry)
    start = time.perf_counter()
    tree = decode_tree(source, image_size=image_size, workers=default_workers(), resize=resize)
    if len(tree.sizes) > 1:
        raise RichKDError(_sizes_message(source, tree.sizes, tree.bad))
    splits = tree.splits
    if not splits:
        if tree.bad:
            raise RichKDError(f"none of the {len(tree.bad)} image files in {source} can be decoded, e.g. "
                              f"{tree.bad[0][0]} ({tree.bad[0][1]})")
        raise RichKDError(
            f"no images found in {source}: expected <class>/<image> folders, or {'/, '.join(SPLIT_DIRS)}/ "
            "folders holding them"
        )
    classes = sorted({path.split("/")[0] for split in splits.values() for path in split.paths})
    empty = sorted(
        f"{split}/{name}" if split != UNSPLIT else name
        for split, names in tree.class_dirs.items() for name in names - set(classes)
    )
    if empty:
        raise RichKDError(
            f"class folder {empty[0]} in {source} has no readable images"
            + (f" (nor do {', '.join(empty[1:4])}{', ...' if len(empty) > 4 else ''})" if len(empty) > 1 else "")
            + ": add images or remove the folder"
        )
    index = {name: i for i, name in enumerate(classes)}
    stats_split = "train" if "train" in splits else (UNSPLIT if UNSPLIT in splits else sorted(splits)[0])
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
            "resize": resize,
            "classes": classes,
            "splits": {name: len(split.paths) for name, split in splits.items()},
            "image_shape": list(next(iter(splits.values())).images.shape[1:]),
            "mean": list(mean),
            "std": list(std),
            "stats_split": stats_split,
            "bad": [list(b) for b in tree.bad],
            "decode_seconds": round(time.perf_counter() - start, 2),
        }
        _write_atomic(entry / "meta.json", json.dumps(meta, indent=1).encode())
    except OSError as exc:
        raise RichKDError(f"cannot write the dataset cache {entry} ({exc}): set data.cache_dir") from None
    log.info("decoded %s in %.1f s", source, meta["decode_seconds"])
    return meta


def _sizes_message(source: Path, sizes: dict[tuple[int, int], tuple[int, str]], bad: list[tuple[str, str]]) -> str:
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1][0])
    shown = ", ".join(f"{w}x{h} ({n}, e.g. {example})" for (w, h), (n, example) in ranked[:4])
    more = f" and {len(ranked) - 4} more" if len(ranked) > 4 else ""
    common = ranked[0][0]
    tail = f"; also {len(bad)} unreadable files (e.g. {bad[0][0]})" if bad else ""
    return (
        f"images in {source} have {len(ranked)} sizes: {shown}{more}; pass data.image_size=<pixels> (CLI: "
        f"--image-size {min(common)}) to resize every image (data.resize=shorter: shorter side + centre crop; "
        f"squash: whole image){tail}"
    )


def _check_bad(meta: dict[str, Any], source: Path, entry: Path, skip_bad: bool) -> None:
    """Refuse a folder with unreadable files, naming all of them (one line + a list file), unless skip_bad."""
    bad = meta.get("bad", [])
    if not bad:
        return
    if skip_bad:
        if str(entry) not in _WARNED:  # once per process, not once per split loaded
            _WARNED.add(str(entry))
            log.warning("skipping %d unreadable files in %s (data.skip_bad=true): %s", len(bad), source,
                        ", ".join(p for p, _ in bad[:BAD_SHOWN]) + (" ..." if len(bad) > BAD_SHOWN else ""))
        return
    listing = entry / "unreadable.txt"
    write_atomic(listing, lambda fh: fh.write("".join(f"{p}\t{r}\n" for p, r in bad).encode()))
    shown = ", ".join(f"{p} ({r})" if i == 0 else p for i, (p, r) in enumerate(bad[:BAD_SHOWN]))
    more = f" and {len(bad) - BAD_SHOWN} more" if len(bad) > BAD_SHOWN else ""
    raise RichKDError(
        f"{len(bad)} unreadable image file{'s' if len(bad) > 1 else ''} in {source}: {shown}{more} (all listed in "
        f"{listing}); delete or fix them, or pass data.skip_bad=true (CLI: --skip-bad) to use the rest"
    )


def _read_meta(
    entry: Path, source: str, fingerprint: dict[str, int], image_size: int | None, resize: str = "shorter"
) -> dict[str, Any] | None:
    """The cache's meta.json if it describes this exact source; None means (re)build."""
    try:
        meta: dict[str, Any] = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    expected = {"format_version": FORMAT_VERSION, "source": source, "fingerprint": fingerprint}
    stale = meta.get("image_size") != image_size or meta.get("resize") != resize
    if any(meta.get(k) != v for k, v in expected.items()) or stale:
        log.info("dataset cache %s is stale; rebuilding", entry)
        return None
    return meta


def _readable(entry: Path, split: str, meta: dict[str, Any]) -> bool:
    return (entry / f"{split}.images.npy").is_file() and (entry / f"{split}.labels.npy").is_file()


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

"""Resumable, chunked writing of (row, view) caches into memory-mapped .npy files.

Shared by the vision-language target cache and the CNN teacher cache. A build writes its arrays in row
order; `progress.json` records the recipe (a JSON-able content key) and the rows done after each flushed
chunk, so rerunning the same command continues where a killed build stopped. The cache's `meta.json` is
written last by the caller, so an unfinished build is never served.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from richkd.engine.io import is_temp_name, remove_stale, write_json_atomic, write_text_atomic
from richkd.engine.lock import LOCK_NAME, hold
from richkd.errors import RichKDError

META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"

ArraySpec = Mapping[str, tuple[str, tuple[int, ...]]]  # file name -> (dtype, shape)


@contextmanager
def locked(out: Path, what: str) -> Iterator[None]:
    """Hold `out` (made if missing) for one builder; a second builder fails in one line naming the holder.

    Temp files of a killed writer are removed first: under the lock nobody else can be writing them.
    """
    with hold(out, what):
        remove_stale(out)
        yield


def is_bookkeeping(name: str) -> bool:
    """The lock file and atomic-write temp files: never content, never a reason to refuse a folder."""
    return name == LOCK_NAME or is_temp_name(name)


def content_key(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that define a cache's content (not when or by which version it was made), as read from JSON."""
    # subset_rule is provenance too: rows_sha256 pins the rows, so a build from before the rule was recorded
    # resumes or is found complete exactly when it holds the same rows
    d = {k: v for k, v in meta.items() if k not in ("created", "richkd_version", "subset_rule")}
    as_read: dict[str, Any] = json.loads(json.dumps(d))  # tuples -> lists, as read back from JSON
    return as_read


def _read_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None for a damaged or foreign file (then the folder is not one of our caches)."""
    try:
        obj = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def rows_done_in(out: Path, key: dict[str, Any], array_names: tuple[str, ...], *, what: str, n_rows: int) -> int:
    """Rows already done in `out` for the recipe `key` (-1: a fresh build; n_rows: complete); raise on a mismatch.

    `what` names the cache kind in messages ("target cache", "teacher cache").
    """
    if (out / META_FILE).is_file():
        done = _read_object(out / META_FILE)
        if done is None or content_key(done) != key:
            raise RichKDError(f"{out} already holds a {what} built differently: delete it or choose another --out")
        return n_rows
    if (out / PROGRESS_FILE).is_file():
        state = _read_object(out / PROGRESS_FILE)
        if state is None or state.get("meta") != key:
            raise RichKDError(
                f"{out} holds an unfinished build of a different recipe (teacher, prompts, views or data): "
                "rerun that command to finish it, or delete the folder"
            )
        if all((out / name).is_file() for name in array_names):
            return int(state["rows_done"])
    elif out.exists() and any(p.name not in array_names and not is_bookkeeping(p.name) for p in out.iterdir()):
        # only our own arrays (a build stopped before its first checkpoint) may be overwritten
        raise RichKDError(f"{out} exists and is not a {what}: choose another --out")
    return -1


def open_memmaps(out: Path, spec: ArraySpec, *, fresh: bool) -> dict[str, np.memmap[Any, Any]]:
    """Create (fresh) or reopen read-write the arrays of `spec` as memory maps."""
    return {
        name: np.lib.format.open_memmap(
            out / name, mode="w+" if fresh else "r+", dtype=dtype, shape=shape if fresh else None
        )
        for name, (dtype, shape) in spec.items()
    }


def start(out: Path, key: dict[str, Any]) -> None:
    """Record a fresh build (0 rows done), so a kill before the first chunk still resumes."""
    write_json_atomic(out / PROGRESS_FILE, {"meta": key, "rows_done": 0})


def checkpoint(out: Path, arrays: Mapping[str, np.memmap[Any, Any]], key: dict[str, Any], rows_done: int) -> None:
    """Data first, then the progress record: a crash in between only redoes rows, never skips them."""
    for arr in arrays.values():
        arr.flush()
    write_json_atomic(out / PROGRESS_FILE, {"meta": key, "rows_done": rows_done})


def finish(out: Path, meta_json: str) -> None:
    """Write meta.json (the build is now servable) and drop the progress record."""
    write_text_atomic(out / META_FILE, meta_json)
    (out / PROGRESS_FILE).unlink(missing_ok=True)


def check_space(out: Path, n_bytes: int, *, what: str) -> None:
    """Refuse before starting when the arrays would not fit on the disk that holds `out`."""
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    already = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) if out.is_dir() else 0
    if n_bytes - already > free:
        raise RichKDError(
            f"the {what} needs {n_bytes / 2**30:.2f} GiB but {probe} has {free / 2**30:.2f} GiB free: "
            "free space, choose another --out or build a subset with --limit"
        )

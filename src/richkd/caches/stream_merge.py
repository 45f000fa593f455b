"""Merge the parts of a sharded streamed target cache (`richkd vlm cache --shard I/N`) into one cache.

Refuses unless every part is complete, all were built with the same recipe (teacher weights, prompts, class
order, views, the source's row ids), and their row ranges cover every row exactly once. The merged cache is
an ordinary target cache (meta.json last, so a killed merge is never served; rerun it to redo the copy).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from richkd.caches import chunked
from richkd.caches.stream_layout import (
    BUILD_FILE,
    PARTS_DIR,
    PROGRESS_FILE_HINT,
    PROMPT_CLASSES_FILE,
    cache_bytes,
    read_build,
)
from richkd.caches.target import ARRAY_FILES, CacheMeta
from richkd.data.subset import SUBSET_RULE
from richkd.engine.io import write_atomic, write_json_atomic
from richkd.errors import RichKDError

log = logging.getLogger(__name__)

ROW_BLOCK = 4096  # rows copied per step: bounded memory whatever the cache size


def _read_part(path: Path) -> dict[str, Any]:
    record = read_build(path)
    if record is None:
        if (path / chunked.PROGRESS_FILE).is_file():
            done = json.loads((path / chunked.PROGRESS_FILE).read_text()).get("rows_done", 0)
            raise RichKDError(f"cache part {path} is unfinished ({done} rows done): {PROGRESS_FILE_HINT}")
        raise RichKDError(f"{path} is not a cache part (no {BUILD_FILE}): pass the parts/part-* folders")
    return record


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    return next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), "?")


def check_parts(parts: Sequence[Path]) -> tuple[dict[str, Any], list[tuple[Path, dict[str, Any]]]]:
    """The shared recipe key and the parts sorted by first row; RichKDError unless they tile the rows once."""
    if not parts:
        raise RichKDError("no cache parts given")
    records = [(Path(p), _read_part(Path(p))) for p in parts]
    key = records[0][1]["key"]
    for path, rec in records[1:]:
        if rec["key"] != key:
            field = _first_difference(key, rec["key"])
            raise RichKDError(
                f"cache part {path} was built with another recipe than {records[0][0]} ({field} differs): "
                "rebuild it with the same command as the others"
            )
    records.sort(key=lambda r: (r[1]["lo"], r[1]["hi"]))
    n_rows, row = int(key["n_rows"]), 0
    for path, rec in records:
        if rec["lo"] > row:
            raise RichKDError(f"rows {row}..{rec['lo'] - 1} are in no part (a part is missing): build and pass it")
        if rec["lo"] < row:
            raise RichKDError(f"cache part {path} repeats rows {rec['lo']}..{row - 1} already in another part "
                              "(a part given twice, or parts of different --shard counts): pass each part once")
        row = rec["hi"]
    if row != n_rows:
        raise RichKDError(f"rows {row}..{n_rows - 1} are in no part (a part is missing): build and pass it")
    first_emb = np.load(records[0][0] / "class_emb.npy")
    for path, _ in records[1:]:
        if not np.array_equal(np.load(path / "class_emb.npy"), first_emb):
            raise RichKDError(f"cache part {path} holds other class embeddings than {records[0][0]}: rebuild it")
    return key, records


def _copy_into(src: Path, fh: IO[bytes]) -> None:
    with src.open("rb") as f:
        shutil.copyfileobj(f, fh)


def merge_parts(parts: Sequence[Path], out: str | Path, *, delete_parts: bool = False) -> Path:
    """Check `parts` (see `check_parts`) and write them as one target cache in `out`; return `out`."""
    out = Path(out)
    key, records = check_parts(parts)
    with chunked.locked(out, "target cache"):  # one merger; a second (another last part) backs off
        done = out / BUILD_FILE
        if (out / chunked.META_FILE).is_file():
            if not done.is_file() or json.loads(done.read_text())["key"] != key:
                raise RichKDError(
                    f"{out} already holds a target cache built differently: delete it or pick another --out"
                )
            log.info("%s is already merged", out)
            return out
        ours = {*ARRAY_FILES, BUILD_FILE, PROMPT_CLASSES_FILE, PARTS_DIR}
        strange = sorted(p.name for p in out.iterdir() if not (p.name in ours or chunked.is_bookkeeping(p.name)))
        if strange:
            raise RichKDError(f"{out} holds {strange[0]}, so it is no (partly) merged cache: choose another --out")
        meta_fields = {k: v for k, v in key.items() if k not in ("source_sha256", "prompt_names_sha256")}
        # the key leaves subset_rule out (chunked.content_key); streamed splits are never subset: today's rule
        meta = CacheMeta.from_json(json.dumps({**meta_fields, "subset_rule": SUBSET_RULE, "created": "",
                                               "richkd_version": ""}))
        n, v, c, e = meta.n_rows, meta.n_views, meta.n_classes, meta.embed_dim
        chunked.check_space(out, cache_bytes(n, v, c, e), what="merged target cache")
        shapes = {"cosines.npy": (n, v, c), "image_emb.npy": (n, v, e), "aug_params.npy": (n, v, 3)}
        arrays = chunked.open_memmaps(out, {k: (ARRAY_FILES[k][0], s) for k, s in shapes.items()}, fresh=True)
        for path, rec in records:
            for name, dest in arrays.items():
                src = np.load(path / name, mmap_mode="r")
                if src.shape != (rec["hi"] - rec["lo"], *dest.shape[1:]):
                    raise RichKDError(
                        f"cache part {path}: {name} has shape {src.shape}, not its row range: rebuild it"
                    )
                for s in range(0, len(src), ROW_BLOCK):
                    dest[rec["lo"] + s : rec["lo"] + min(s + ROW_BLOCK, len(src))] = src[s : s + ROW_BLOCK]
        for arr in arrays.values():
            arr.flush()
        del arrays
        for name in ("class_emb.npy", PROMPT_CLASSES_FILE):
            write_atomic(out / name, functools.partial(_copy_into, records[0][0] / name))
        write_json_atomic(out / BUILD_FILE, {"key": key, "lo": 0, "hi": n, "part": None, "parts": len(records)})
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        import richkd

        chunked.finish(out, dataclasses.replace(meta, created=created, richkd_version=richkd.__version__).to_json())
        if delete_parts:
            for path, _ in records:
                shutil.rmtree(path)
        log.info("merged %d parts into %s", len(records), out)
        return out

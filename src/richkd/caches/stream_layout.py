"""Where a streamed cache's parts live and how big it is: shared by the builder (`stream`) and the merge
(`stream_merge`), so neither imports the other's internals (the merge used to import the builder, which imports the
merge)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from richkd.errors import RichKDError

BUILD_FILE = "build.json"  # the full recipe key and row range; a part is complete when it exists
PARTS_DIR = "parts"
PROGRESS_FILE_HINT = "rerun its `richkd vlm cache ... --shard I/N` command to finish it"
PROMPT_CLASSES_FILE = "prompt_classes.tsv"  # wnid <TAB> the name the prompts used, per class


def cache_bytes(n_rows: int, n_views: int, n_classes: int, embed_dim: int) -> int:
    """Disk size of a cache: float32 cosines, float16 embeddings, int16 aug params per (row, view)."""
    return n_rows * n_views * (4 * n_classes + 2 * embed_dim + 3 * 2) + 4 * n_classes * embed_dim


def read_build(path: Path) -> dict[str, Any] | None:
    """A part's build record (None when it has none yet: not finished); a damaged one is one line naming the fix."""
    f = path / BUILD_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text(errors="replace"))
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        raise RichKDError(f"{f} is not a JSON object: a damaged cache part; delete its folder and build it again")
    return record

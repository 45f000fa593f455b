"""Where a streamed cache's parts live and how big it is: shared by the builder (`stream`) and the merge
(`stream_merge`), so neither imports the other's internals (the merge used to import the builder, which imports the
merge)."""

from __future__ import annotations

BUILD_FILE = "build.json"  # the full recipe key and row range; a part is complete when it exists
PARTS_DIR = "parts"
PROGRESS_FILE_HINT = "rerun its `richkd vlm cache ... --shard I/N` command to finish it"
PROMPT_CLASSES_FILE = "prompt_classes.tsv"  # wnid <TAB> the name the prompts used, per class


def cache_bytes(n_rows: int, n_views: int, n_classes: int, embed_dim: int) -> int:
    """Disk size of a cache: float32 cosines, float16 embeddings, int16 aug params per (row, view)."""
    return n_rows * n_views * (4 * n_classes + 2 * embed_dim + 3 * 2) + 4 * n_classes * embed_dim

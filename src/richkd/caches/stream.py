"""Target caches of streamed ImageNet-scale splits (an ImageNet-style folder or tar shards), sharded over processes.

The cache is the CIFAR cache's format (`richkd.caches.target`: fp16 embeddings, memory-mapped, same
meta and refusals), with row ids = the streaming sources' stable ids. Differences, and why:

- Images are decoded by DataLoader worker processes, each making the vision-language model's own eval input
  (short side to `ImageSpec.size` with its interpolation, centre crop) as uint8; views are plain and, optionally,
  its mirror (pad 0). Random CIFAR crops have no meaning for RandomResizedCrop students, so there are none.
- `part=(i, n)` builds the i-th of n *contiguous* row ranges into `out/parts/part-i-of-n`, resumable on its own.
  Contiguous, not strided (i, i + n, ...), because a range of a tar-shard set lies in a few shards: each process
  reads only its own shards, where a stride would make every process read every shard. `merge_parts` checks the
  recipe and that the ranges tile all rows exactly once, then writes one cache; the last part to finish merges
  automatically.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from richkd.caches import chunked
from richkd.caches.build_target import _encode_batch
from richkd.caches.stream_layout import BUILD_FILE, PARTS_DIR, PROMPT_CLASSES_FILE, cache_bytes, read_build
from richkd.caches.target import ARRAY_FILES, CacheMeta
from richkd.data.stream import FolderSource, ShardSource
from richkd.data.stream.transforms import decode_rgb
from richkd.engine.io import save_npy_atomic, write_json_atomic, write_text_atomic
from richkd.engine.proc import die_with_parent
from richkd.errors import RichKDError
from richkd.teachers.prompts import check_templates, templates_sha256
from richkd.teachers.vlm import VisionLanguageTeacher

log = logging.getLogger(__name__)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


def open_source(root: str | Path, classes: Sequence[str]) -> FolderSource | ShardSource:
    """Tar shards when `root` holds `*.tar` files, else an ImageNet-style folder labelled by `classes`."""
    root = Path(root).expanduser()
    if root.is_dir() and any(p.name.endswith(".tar") for p in root.iterdir()):
        return ShardSource(root)
    return FolderSource(root, classes=tuple(classes))


def source_fingerprint(source: FolderSource | ShardSource) -> str:
    """sha256 of what fixes the row ids: a folder's sorted paths and labels, or the shard names and counts."""
    h = hashlib.sha256()
    if isinstance(source, FolderSource):
        h.update(b"folder")
        h.update(source.paths.tobytes())
        h.update(source.labels.tobytes())
    else:
        h.update(b"shards")
        h.update("\n".join(p.name for p in source.shards).encode())
        h.update(source.offsets.tobytes())
    return h.hexdigest()


def part_range(n_rows: int, index: int, count: int) -> tuple[int, int]:
    """Rows [lo, hi) of part `index` of `count`: contiguous, sizes differing by at most one."""
    return n_rows * index // count, n_rows * (index + 1) // count


def parse_part(text: str) -> tuple[int, int]:
    """`i/n` -> (i, n), 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise RichKDError(f"--shard {text!r}: expected I/N, e.g. 0/4 (part I of N, counting from 0)") from None
    if not 0 <= i < n:
        raise RichKDError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def part_dir(out: Path, index: int, count: int) -> Path:
    return out / PARTS_DIR / f"part-{index:04d}-of-{count:04d}"


def vlm_view(img: Image.Image, size: int, interpolation: str) -> Tensor:
    """A model's eval input before normalisation: short side to `size` (torchvision's rounding), centre crop;
    uint8 [3, size, size]. `preprocess_images` then only normalises."""
    short, long = sorted((img.width, img.height))
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if img.width <= img.height else (new_long, size)
    img = img.resize((new_w, new_h), _RESAMPLE[interpolation])
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class RangeChunks(IterableDataset[tuple[int, Tensor]]):
    """Rows [lo, hi) as (first row, uint8 images [b, 3, S, S]) chunks of `chunk` rows.

    Chunk k is decoded by worker k mod W, which is the order the DataLoader collects from its workers, so chunks
    arrive in row order. Shards: every worker streams the tar bytes of the range (one disk read, via the page
    cache), but decodes only its own chunks.
    """

    def __init__(self, source: FolderSource | ShardSource, lo: int, hi: int, chunk: int, size: int,
                 interpolation: str) -> None:
        self.source, self.lo, self.hi, self.chunk = source, lo, hi, chunk
        self.size, self.interpolation = size, interpolation

    def _mine(self) -> range:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return range(self.lo + worker * self.chunk, self.hi, n_workers * self.chunk)

    def _view(self, data: bytes, name: str) -> Tensor:
        return vlm_view(decode_rgb(data, name), self.size, self.interpolation)

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        starts = self._mine()
        if isinstance(self.source, FolderSource):
            for s in starts:
                rows = range(s, min(s + self.chunk, self.hi))
                yield s, torch.stack([self._view(r.data, r.name) for r in map(self.source.read, rows)])
            return
        wanted = set(starts)
        held: list[Tensor] = []
        first = 0
        offsets = self.source.offsets
        for shard in range(len(self.source.shards)):
            if offsets[shard + 1] <= self.lo or offsets[shard] >= self.hi:
                continue
            for sample in self.source.iter_shard(shard):
                if not self.lo <= sample.row < self.hi:
                    continue
                start = self.lo + (sample.row - self.lo) // self.chunk * self.chunk
                if start not in wanted:
                    continue
                if not held:
                    first = start
                held.append(self._view(sample.data, sample.name))
                if sample.row + 1 == min(start + self.chunk, self.hi):
                    yield first, torch.stack(held)
                    held = []


def _init_worker(parent_pid: int, worker_id: int) -> None:
    die_with_parent(parent_pid)


@dataclasses.dataclass(frozen=True)
class StreamCacheRecipe:
    """What a streamed cache holds: the CacheMeta of the whole cache plus what fixes rows and prompt names."""

    meta: CacheMeta
    source_sha256: str
    prompt_names: tuple[str, ...]

    def key(self) -> dict[str, Any]:
        k = chunked.content_key(dataclasses.asdict(self.meta))
        k["source_sha256"] = self.source_sha256
        k["prompt_names_sha256"] = hashlib.sha256("\n".join(self.prompt_names).encode()).hexdigest()
        return k

    def array_spec(self, n_rows: int) -> chunked.ArraySpec:
        m = self.meta
        shapes = {"cosines.npy": (n_rows, m.n_views, m.n_classes), "image_emb.npy": (n_rows, m.n_views, m.embed_dim),
                  "aug_params.npy": (n_rows, m.n_views, 3)}
        return {name: (ARRAY_FILES[name][0], shape) for name, shape in shapes.items()}


def make_recipe(
    vlm: VisionLanguageTeacher, source: FolderSource | ShardSource, *, dataset: str, split: str,
    classes: Sequence[str], prompt_names: Sequence[str], templates: Sequence[str], clean_names: bool,
    include_flip: bool, embed_dim: int,
) -> StreamCacheRecipe:
    import richkd

    templates = check_templates(templates)
    views = ("plain", "flip") if include_flip else ("plain",)
    meta = CacheMeta(
        dataset=dataset, split=split, n_rows=len(source), class_names=tuple(classes), n_views=len(views),
        view_names=views, model_id=vlm.model_id, model_kind=vlm.kind, model_label=vlm.label,
        weights_sha256=vlm.fingerprint(), templates=templates, templates_sha256=templates_sha256(templates),
        clean_names=clean_names, embed_dim=embed_dim, image_size=vlm.image_spec.size, pad=0, seed=0,
        richkd_version=richkd.__version__,
    )
    return StreamCacheRecipe(meta, source_fingerprint(source), tuple(prompt_names))


def _rows_done(out: Path, key: dict[str, Any], lo: int, hi: int, array_names: tuple[str, ...]) -> int | None:
    """Rows of [lo, hi) already in `out` for this recipe (-1: fresh; None: complete); refuse a mismatch."""
    done = read_build(out)
    if done is not None:
        if done["key"] != key or (done["lo"], done["hi"]) != (lo, hi):
            raise RichKDError(f"{out} already holds a target cache built differently: delete it or pick another --out")
        return None
    if (out / chunked.PROGRESS_FILE).is_file() or not (out / chunked.META_FILE).is_file():
        return chunked.rows_done_in(out, {"key": key, "lo": lo, "hi": hi}, array_names, what="target cache",
                                    n_rows=hi - lo)
    raise RichKDError(f"{out} already holds a target cache built differently: delete it or pick another --out")


def build_stream_cache(
    vlm: VisionLanguageTeacher, source: FolderSource | ShardSource, out: str | Path, recipe: StreamCacheRecipe, *,
    class_emb: Tensor, part: tuple[int, int] | None = None, batch_size: int = 256, workers: int = 0,
    bf16: bool = False, device: torch.device | str = "cpu", checkpoint_seconds: float = 30.0,
    auto_merge: bool = True,
) -> Path:
    """Build the cache (or, with `part=(i, n)`, its i-th row range into out/parts/) and return where it went.

    Resumable: progress.json records the rows done after every checkpoint; rerun the same call to continue.
    """
    out, device = Path(out), torch.device(device)
    n = recipe.meta.n_rows
    index, count = part if part is not None else (0, 1)
    lo, hi = part_range(n, index, count)
    target = part_dir(out, index, count) if part is not None else out
    key = recipe.key()
    progress_key = {"key": key, "lo": lo, "hi": hi}
    names = tuple(ARRAY_FILES)
    with chunked.locked(target, "target cache"):
        rows_done = _rows_done(target, key, lo, hi, names)
        if rows_done is None:  # complete (a single build killed after build.json still needs its meta.json)
            log.info("%s is already complete for this recipe", target)
            if part is None and not (out / chunked.META_FILE).is_file():
                chunked.finish(out, _final_meta(recipe).to_json())
            return _maybe_merge(out, count, auto_merge) if part is not None else out
        m = recipe.meta
        chunked.check_space(target, cache_bytes(hi - lo, m.n_views, m.n_classes, m.embed_dim), what="target cache")
        fresh = rows_done < 0
        target.mkdir(parents=True, exist_ok=True)
        arrays = chunked.open_memmaps(target, recipe.array_spec(hi - lo), fresh=fresh)
        if fresh:
            arrays["aug_params.npy"][:] = np.array([(0, 0, v) for v in range(m.n_views)], dtype=np.int16)[None]
            rows_done = 0
            chunked.start(target, progress_key)
        save_npy_atomic(target / "class_emb.npy", class_emb.float().cpu().numpy())
        params = torch.tensor([(0, 0, v) for v in range(m.n_views)], dtype=torch.long)  # [V, 3]: plain, flip
        data = RangeChunks(source, lo + rows_done, hi, batch_size, vlm.image_spec.size, vlm.image_spec.interpolation)
        loader: DataLoader[tuple[int, Tensor]] = DataLoader(
            data, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
            worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers else None,
        )
        log.info("building %s: rows %d..%d of %d, %d views, %s, %d decode workers", target, lo, hi, n, m.n_views,
                 vlm.label, workers)
        class_emb = class_emb.to(device)
        expected, last = lo + rows_done, time.monotonic()
        with torch.inference_mode():
            for start, images in loader:
                if start != expected:
                    raise RichKDError(f"internal error: chunk at row {start} arrived, expected {expected}")
                b = images.shape[0]
                cos, emb = _encode_batch(vlm, images.to(device), params.expand(b, -1, -1), 0, class_emb, bf16)
                arrays["cosines.npy"][start - lo : start - lo + b] = cos.numpy()
                arrays["image_emb.npy"][start - lo : start - lo + b] = emb.numpy().astype(np.float16)
                expected = start + b
                if time.monotonic() - last >= checkpoint_seconds or expected == hi:
                    chunked.checkpoint(target, arrays, progress_key, expected - lo)
                    last = time.monotonic()
        if expected != hi:
            raise RichKDError(f"the source ended at row {expected}, before row {hi}: was it changed during the build?")
        del arrays
        _write_names(target, recipe)
        write_json_atomic(target / BUILD_FILE, {"key": key, "lo": lo, "hi": hi, "part": index, "parts": count})
        if part is None:
            chunked.finish(target, _final_meta(recipe).to_json())
            return out
        (target / chunked.PROGRESS_FILE).unlink(missing_ok=True)
        return _maybe_merge(out, count, auto_merge)


def _write_names(target: Path, recipe: StreamCacheRecipe) -> None:
    lines = "".join(f"{w}\t{name}\n" for w, name in zip(recipe.meta.class_names, recipe.prompt_names, strict=True))
    write_text_atomic(target / PROMPT_CLASSES_FILE, lines)


def _final_meta(recipe: StreamCacheRecipe) -> CacheMeta:
    return dataclasses.replace(recipe.meta, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _maybe_merge(out: Path, count: int, auto_merge: bool) -> Path:
    """Merge into `out` once every part of `count` is complete; else return the finished part's folder."""
    parts = [part_dir(out, i, count) for i in range(count)]
    if not auto_merge or not all((p / BUILD_FILE).is_file() for p in parts):
        return out / PARTS_DIR
    from richkd.caches.stream_merge import merge_parts
    from richkd.engine.lock import FolderBusy

    try:
        return merge_parts(parts, out)
    except FolderBusy as busy:
        log.warning("%s; it merges the parts, or run `richkd vlm cache-merge %s/%s/part-* --out %s` after it",
                    busy, out, PARTS_DIR, out)
        return out / PARTS_DIR

"""A frozen CNN teacher's outputs for every (row, view) of a split, served instead of running the teacher.

CIFAR's training augmentation is a finite family (richkd.data.views: 9 x 9 crop offsets x 2 flips = 162 views
at pad 4), and a frozen teacher in eval mode is a fixed function, so its logits and pooled features for all
views of all rows are a fixed table, computed once (`richkd teacher cache`) and shared by every run that uses
that teacher. A cache is a directory:

- ``meta.json``    provenance (:class:`TeacherCacheMeta`); written last, so an unfinished build is refused.
- ``logits.npy``   float16 ``[N, V, C]``.
- ``pooled.npy``   float16 ``[N, V, D]`` the penultimate features (ModelOutput.pooled).

float16, not bfloat16: teacher logits and pooled features are O(1-30), far inside fp16's range (the builder
refuses an overflow), where fp16 keeps 3 more mantissa bits. Measured on a trained resnet20's targets for all
162 views of 30 CIFAR-10 images, fp16 storage moved the teacher's softmax at T=4 by at most 2.8e-4 and the
mean KD loss by 8e-7 relative; bf16 by 2.2e-3 and 1.4e-5 (docs/speed.md "Exact teacher caches").
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from richkd.caches.chunked import META_FILE, PROGRESS_FILE
from richkd.caches.residency import fits_in_memory, memory_available
from richkd.caches.target import map_cache_rows, take_views
from richkd.data.batch import Batch
from richkd.data.subset import LEGACY_SUBSET_RULE, SUBSET_RULE
from richkd.data.views import plain_view_id
from richkd.errors import RichKDError
from richkd.targets import TeacherTargets

__all__ = ["CachedTeacher", "TeacherCache", "TeacherCacheMeta", "array_shapes", "memory_available"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARRAY_FILES: dict[str, str] = {"logits.npy": "float16", "pooled.npy": "float16"}


def _rebuild(path: Path) -> str:
    return f"rebuild it with `richkd teacher cache ... --out {path}` or unset model.teacher_cache"


@dataclass(frozen=True)
class TeacherCacheMeta:
    """What a teacher cache holds; a run is refused unless teacher, data, pad and normalisation all match."""

    arch: str
    checkpoint_sha256: str
    dataset: str
    split: str
    n_rows: int
    class_names: tuple[str, ...]
    feature_dim: int
    pad: int
    n_views: int
    view_enumeration: str  # richkd.data.views.ENUMERATION
    mean: tuple[float, float, float]  # normalisation the teacher was fed
    std: tuple[float, float, float]
    compute: str  # "float32" or "bfloat16": the teacher's forward precision
    subset_limit: int | None = None  # a stratified subset (`--limit N`), pinned by rows_sha256
    split_rows: int | None = None
    rows_sha256: str | None = None
    subset_rule: int = SUBSET_RULE  # richkd.data.subset rule the rows were chosen by (absent in meta.json: 1)
    storage: str = "float16"
    created: str = ""
    richkd_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def plain_view(self) -> int:
        """The view holding the un-augmented image (crop origin (pad, pad), no flip), as TargetCache's meta."""
        return plain_view_id(self.pad)

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.n_views * (self.n_classes + self.feature_dim) * 2

    def describe_rows(self) -> str:
        if self.subset_limit is None:
            return f"all {self.n_rows} rows"
        return f"a stratified subset of {self.n_rows} of {self.split_rows} rows (--limit {self.subset_limit})"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> TeacherCacheMeta:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RichKDError(f"teacher cache {path}: meta.json is not valid JSON ({exc}); {_rebuild(path)}") from None
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            raise RichKDError(f"teacher cache {path}: meta.json is not format {FORMAT_VERSION}; {_rebuild(path)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        raw.setdefault("subset_rule", LEGACY_SUBSET_RULE)  # written before issue 27
        if set(raw) != fields:
            raise RichKDError(f"teacher cache {path}: meta.json has other keys than expected; {_rebuild(path)}")
        for key in ("class_names", "mean", "std"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


def array_shapes(meta: TeacherCacheMeta) -> dict[str, tuple[int, int, int]]:
    n, v = meta.n_rows, meta.n_views
    return {"logits.npy": (n, v, meta.n_classes), "pooled.npy": (n, v, meta.feature_dim)}


class TeacherCache:
    """Cached teacher outputs, gathered by (cache row, view): on the device after `to_device`, else from the
    memory-mapped files (caches larger than memory: the OS pages in what a batch touches)."""

    def __init__(self, path: Path, meta: TeacherCacheMeta, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
        self.path = path
        self.meta = meta
        self._np = arrays
        self._logits: Tensor | None = None  # [N, V, C] float16 on the device, after to_device
        self._pooled: Tensor | None = None  # [N, V, D]

    @classmethod
    def open(cls, path: str | Path) -> TeacherCache:
        path = Path(path)
        if not (path / META_FILE).is_file():
            state = "an unfinished build: rerun the same `richkd teacher cache` command to resume it" if (
                path / PROGRESS_FILE
            ).is_file() else f"not a teacher cache (no {META_FILE})"
            raise RichKDError(f"teacher cache {path} is {state}")
        meta = TeacherCacheMeta.from_json((path / META_FILE).read_text(errors="replace"), path)
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name, shape in array_shapes(meta).items():
            try:
                arr = np.load(path / name, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise RichKDError(
                    f"teacher cache {path}: {name} is missing or corrupt ({exc}); {_rebuild(path)}"
                ) from None
            if arr.dtype != np.dtype(ARRAY_FILES[name]) or arr.shape != shape:
                raise RichKDError(
                    f"teacher cache {path}: {name} is {arr.dtype} {arr.shape}, meta.json says float16 {shape}; "
                    + _rebuild(path)
                )
            arrays[name] = arr
        return cls(path, meta, arrays)

    def validate(
        self,
        *,
        arch: str,
        checkpoint_sha256: str,
        dataset: str,
        split: str,
        n_rows: int,
        class_names: Sequence[str],
        pad: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        """Refuse, in one line, a cache made by another teacher or for other data, crops or normalisation."""
        m = self.meta
        split_rows = m.n_rows if m.split_rows is None else m.split_rows
        checks = [
            ("teacher architecture", m.arch, arch),
            ("teacher checkpoint sha256", m.checkpoint_sha256[:12], checkpoint_sha256[:12]),
            ("dataset/split", f"{m.dataset}/{m.split}", f"{dataset}/{split}"),
            ("split rows", split_rows, n_rows),
            ("class list", m.class_names, tuple(class_names)),
            ("crop pad (data.pad)", m.pad, pad),
            ("normalisation mean/std", _stats(m.mean, m.std), _stats(mean, std)),
        ]
        for what, cached, run in checks:
            if cached != run:
                if what == "class list":
                    cached, run = _classes(m.class_names), _classes(tuple(class_names), m.class_names)
                raise RichKDError(
                    f"teacher cache {self.path} was built for {what} {cached} but the run uses {run}: "
                    + _rebuild(self.path)
                )

    def cache_rows(self, split_labels: Tensor, run_rows: Tensor | None) -> Tensor | None:
        """Cache row of each training row (None: the same row), as TargetCache.cache_rows."""
        m = self.meta
        return map_cache_rows(
            self.path, m.subset_limit, m.rows_sha256, m.describe_rows(), split_labels, run_rows,
            what="teacher cache", rebuild=_rebuild(self.path),
        )

    def fits(self, device: torch.device, fraction: float = 0.5) -> bool:
        """Whether loading the cache would leave room: at most `fraction` of the memory available now."""
        return fits_in_memory(self.meta.nbytes, device, fraction)

    def to_device(self, device: torch.device | str) -> None:
        """Load both arrays onto `device` as float16 tensors (half the memory of float32; cast per batch). Read, not
        copied out of the memory map, whose pages would count twice in the peak RSS."""
        logits = torch.from_numpy(np.load(self.path / "logits.npy", allow_pickle=False))
        pooled = torch.from_numpy(np.load(self.path / "pooled.npy", allow_pickle=False))
        if logits.shape != self._np["logits.npy"].shape or pooled.shape != self._np["pooled.npy"].shape:
            raise RichKDError(f"teacher cache {self.path} changed on disk since it was opened; {_rebuild(self.path)}")
        self._logits, self._pooled = logits.to(device), pooled.to(device)

    def lookup(self, rows: Tensor, views: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [B, C], pooled [B, D]) in float32 of cache rows `rows` at views `views` (int64 [B])."""
        if self._logits is not None and self._pooled is not None:
            return take_views(self._logits, rows, views).float(), take_views(self._pooled, rows, views).float()
        r, v = rows.cpu().numpy(), views.cpu().numpy()
        logits = torch.from_numpy(np.asarray(self._np["logits.npy"][r, v])).to(rows.device).float()
        pooled = torch.from_numpy(np.asarray(self._np["pooled.npy"][r, v])).to(rows.device).float()
        return logits, pooled

    def __repr__(self) -> str:
        m = self.meta
        return f"TeacherCache({self.path}, {m.arch} on {m.dataset}/{m.split}, rows={m.n_rows}, views={m.n_views})"


def _classes(names: tuple[str, ...], other: tuple[str, ...] | None = None) -> str:
    """`10 classes` or, against the cache's list, where the first difference is."""
    if other is None:
        return f"{len(names)} classes ({', '.join(names[:3])}, ...)"
    first = next((i for i, (a, b) in enumerate(zip(names, other, strict=False)) if a != b), min(len(names), len(other)))
    shown = repr(names[first]) if first < len(names) else "none"
    return f"{len(names)} classes (class {first} is {shown})"


def _stats(mean: Sequence[float], std: Sequence[float]) -> str:
    return "/".join(",".join(f"{x:.4f}" for x in v) for v in (mean, std))


class CachedTeacher:
    """A TargetSource that looks the teacher's outputs up instead of running it: batch.views must be exact view ids
    (richkd.data.views; BatchMaker(exact_views=True) sets them from the crop/flip it drew)."""

    def __init__(self, cache: TeacherCache, row_map: Tensor | None = None) -> None:
        self.cache = cache
        self.row_map = row_map  # training row -> cache row (None: the same row)
        self.feature_dim = cache.meta.feature_dim

    def __call__(self, batch: Batch) -> TeacherTargets:
        rows = batch.indices if self.row_map is None else self.row_map[batch.indices]
        logits, pooled = self.cache.lookup(rows, batch.views)
        return TeacherTargets(logits=logits, pooled=pooled, clip=None)

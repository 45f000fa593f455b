"""On-disk cache of vision-language targets, served by (row, view) (METHOD.md §6, ARCHITECTURE.md 6.2).

A cache is a directory:

- ``meta.json``       provenance (:class:`CacheMeta`); written last, so a directory without it is an
                      incomplete build and is refused.
- ``cosines.npy``     float32 ``[N, V, C]`` unscaled image-class cosines (the logit scale is a fusion setting).
- ``image_emb.npy``   float16 ``[N, V, E]`` L2-normalised image embeddings.
- ``aug_params.npy``  int16 ``[N, V, 3]`` the (dx, dy, flip) crop/flip of each view; plain = (pad, pad, 0).
- ``class_emb.npy``   float32 ``[C, E]`` the prompt-ensembled class embeddings.

All arrays are plain ``.npy`` files, memory-mapped on open, so a 1.28 M-row cache costs no RAM until used.
Which view is the plain (un-augmented) image is one property of a cache, ``CacheMeta.plain_view``: view 0 of a
cache of random views, view ``plain_view_id(pad)`` (40 at pad 4) of an exact-view cache (``--views all``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from richkd.data.subset import LEGACY_SUBSET_RULE, SUBSET_RULE, old_rule_note, stratified_rows
from richkd.data.subset import rows_sha256 as rows_sha256  # re-exported: the cache builders import it from here
from richkd.data.views import exact_view_names, plain_view_id
from richkd.engine.io import recover_dir, replace_dir, temp_dir_for
from richkd.engine.lock import hold_beside
from richkd.errors import RichKDError
from richkd.targets import ClipTargets

if TYPE_CHECKING:
    from richkd.data.augment import CropFlip

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
MODEL_KINDS = ("clip", "surrogate", "random")
# absent in caches of 0.1.0 (the subset fields) or from before issue 27 (subset_rule: read as rule 1)
OPTIONAL_META_KEYS = frozenset({"subset_limit", "split_rows", "rows_sha256", "subset_rule"})
# file name -> (dtype, rank) of the arrays a cache holds
ARRAY_FILES: dict[str, tuple[str, int]] = {
    "cosines.npy": ("float32", 3),
    "image_emb.npy": ("float16", 3),
    "aug_params.npy": ("int16", 3),
    "class_emb.npy": ("float32", 2),
}


def _rebuild_hint(path: Path) -> str:
    return f"rebuild it with `richkd vlm cache ... --out {path}`"


@dataclass(frozen=True)
class CacheMeta:
    """Provenance of a target cache; a run is refused unless dataset, split, rows and class order match."""

    dataset: str
    split: str
    n_rows: int
    class_names: tuple[str, ...]
    n_views: int
    view_names: tuple[str, ...]  # e.g. ("plain", "flip", "aug0", ...)
    model_id: str
    model_kind: str  # one of MODEL_KINDS
    model_label: str  # human label; surrogate and random models say so
    weights_sha256: str
    templates: tuple[str, ...]
    templates_sha256: str
    clean_names: bool
    embed_dim: int
    image_size: int
    pad: int = 4  # crop padding the aug params refer to (dx, dy in [0, 2 * pad])
    seed: int = 0  # seed of the augmented views' parameters
    # A cache may cover a stratified subset (`richkd vlm cache --limit N`, richkd.data.subset): then its rows are
    # stratified_rows(split labels, subset_limit) of a split of split_rows rows, and rows_sha256 pins them.
    subset_limit: int | None = None
    split_rows: int | None = None
    rows_sha256: str | None = None
    subset_rule: int = SUBSET_RULE  # richkd.data.subset rule the rows were chosen by (absent in meta.json: 1)
    feature_dtype: str = "float16"
    created: str = ""
    richkd_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.model_kind not in MODEL_KINDS:
            raise RichKDError(f"cache model_kind {self.model_kind!r} is not one of {', '.join(MODEL_KINDS)}")
        if len(self.view_names) != self.n_views:
            raise RichKDError(f"cache meta lists {len(self.view_names)} view names for {self.n_views} views")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CacheMeta:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RichKDError(f"cache meta.json is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise RichKDError("cache meta.json does not hold a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise RichKDError(f"cache format version {version!r} is not supported (this richkd reads {FORMAT_VERSION})")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - raw.keys() - OPTIONAL_META_KEYS)
        unknown = sorted(raw.keys() - fields)
        if missing or unknown:
            raise RichKDError(f"cache meta.json is corrupt: missing keys {missing}, unknown keys {unknown}")
        for key in ("class_names", "view_names", "templates"):
            raw[key] = tuple(raw[key])
        raw.setdefault("subset_rule", LEGACY_SUBSET_RULE)
        return cls(**raw)

    @property
    def is_exact(self) -> bool:
        """Whether the cache holds every view of the exact crop/flip family (`richkd vlm cache --views all`)."""
        return self.view_names == exact_view_names(self.pad)

    @property
    def plain_view(self) -> int:
        """The view holding the un-augmented image: what training (vlm.view_mode=plain), `richkd predict --cache`
        and `richkd vlm fit-scale` read."""
        if self.is_exact:
            return plain_view_id(self.pad)
        if "plain" in self.view_names:
            return self.view_names.index("plain")
        raise RichKDError(f"the cache's views {self.view_names[:3]}... include no plain (un-augmented) view")

    @property
    def nbytes(self) -> int:
        """Bytes of the per-view arrays as stored (cosines fp32, embeddings fp16, aug params int16)."""
        return self.n_rows * self.n_views * (self.n_classes * 4 + self.embed_dim * 2 + 3 * 2)

    @property
    def rows_in_split(self) -> int:
        """Rows of the whole split the cache was built from (more than n_rows for a subset cache)."""
        return self.n_rows if self.split_rows is None else self.split_rows

    def describe_rows(self) -> str:
        if self.subset_limit is None:
            return f"all {self.n_rows} rows"
        return f"a stratified subset of {self.n_rows} of {self.rows_in_split} rows (--limit {self.subset_limit})"


def map_cache_rows(
    path: Path,
    subset_limit: int | None,
    held_sha256: str | None,
    held_description: str,
    split_labels: Tensor,
    run_rows: Tensor | None,
    *,
    what: str,
    rebuild: str,
) -> Tensor | None:
    """The cache row of each run row (`run_rows`: full-split ids, None = the whole split) for a cache of the whole
    split (subset_limit None: the identity, returned as `run_rows`) or of a stratified subset pinned by its sha256.

    The subset is recomputed with today's rule and compared with the recorded rows: a cache built under an older
    rule serves on where both rules pick the same rows, and is refused in one line where they differ."""
    if subset_limit is None:
        return run_rows
    held = stratified_rows(split_labels, subset_limit)
    if rows_sha256(held) != held_sha256:
        why = old_rule_note(split_labels, subset_limit, held_sha256) or (
            " (were the images or labels changed since it was built?)"
        )
        raise RichKDError(f"{what} {path} holds other rows than the stratified subset of this split{why}: {rebuild}")
    position = torch.full((len(split_labels),), -1, dtype=torch.int64)
    position[held] = torch.arange(len(held))
    wanted = run_rows.cpu() if run_rows is not None else torch.arange(len(split_labels))
    mapped = position[wanted]
    if bool((mapped < 0).any()):
        limit = "" if run_rows is None else f" (a subset of {len(wanted)})"
        raise RichKDError(
            f"{what} {path} covers {held_description} but the run trains on rows outside it"
            f"{limit}: build the cache with the same --limit as data.train_limit, or without --limit"
        )
    return mapped


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int16": torch.int16}


def take_views(t: Tensor, indices: Tensor, views: Tensor) -> Tensor:
    """t[indices, views] for a contiguous [N, V, K] tensor, as one index_select of the [N * V, K] view: the same
    values, without advanced indexing's slow path for float16/int16 on CPU (4.4 ms against 0.012 ms for 128 rows of
    a [1000, 162, 512] float16 tensor on the 2-core EPYC this was written on)."""
    return t.view(-1, t.shape[-1]).index_select(0, indices * t.shape[1] + views)


def _as_numpy(x: Tensor | np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, Any]:
    if isinstance(x, Tensor):
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def check_shapes(meta: CacheMeta, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise RichKDError unless the array shapes agree with `meta` (file name -> shape)."""
    n, v, c, e = meta.n_rows, meta.n_views, meta.n_classes, meta.embed_dim
    want = {
        "cosines.npy": (n, v, c),
        "image_emb.npy": (n, v, e),
        "aug_params.npy": (n, v, 3),
        "class_emb.npy": (c, e),
    }
    for name, shape in want.items():
        if tuple(shapes[name]) != shape:
            raise RichKDError(f"cache array {name} has shape {tuple(shapes[name])}, meta.json says {shape}")


def write_target_cache(
    path: str | Path,
    *,
    cosines: Tensor | np.ndarray[Any, Any],
    image_emb: Tensor | np.ndarray[Any, Any],
    aug_params: Tensor | np.ndarray[Any, Any],
    class_emb: Tensor | np.ndarray[Any, Any],
    meta: CacheMeta,
) -> None:
    """Write a complete cache in one go (small caches, tests); atomic: a temp dir renamed into place."""
    path = Path(path)
    arrays = {
        "cosines.npy": _as_numpy(cosines, "float32"),
        "image_emb.npy": _as_numpy(image_emb, "float16"),
        "aug_params.npy": _as_numpy(aug_params, "int16"),
        "class_emb.npy": _as_numpy(class_emb, "float32"),
    }
    check_shapes(meta, {k: a.shape for k, a in arrays.items()})
    with hold_beside(path, "target cache"):
        recover_dir(path)  # a replacement killed between its renames; stale tmp/old folders of dead writers
        tmp = temp_dir_for(path)
        try:
            for name, arr in arrays.items():
                np.save(tmp / name, arr)
            (tmp / META_FILE).write_text(meta.to_json())
            replace_dir(tmp, path)  # fsyncs the files and both folders; never a moment without a cache
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def read_meta(path: str | Path) -> CacheMeta:
    """Read `path/meta.json`; RichKDError if absent (incl. an unfinished build) or corrupt."""
    path = Path(path)
    recover_dir(path)  # a write_target_cache killed between its two renames: the old cache comes back
    if not path.is_dir():
        raise RichKDError(f"target cache {path} does not exist: build it with `richkd vlm cache --out {path}`")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        if (path / PROGRESS_FILE).is_file():
            raise RichKDError(
                f"target cache {path} is an unfinished build: rerun the same `richkd vlm cache` command to resume it"
            )
        raise RichKDError(f"target cache {path} has no {META_FILE}: it is not a target cache; {_rebuild_hint(path)}")
    return CacheMeta.from_json(meta_file.read_text(errors="replace"))


class TargetCache:
    """Vision-language targets precomputed once and served by (dataset row, view).

    `lookup` gathers on whatever device the arrays live on: after `to_device(d)` all arrays are tensors on `d` in
    their stored dtypes (one indexing op, no Python loop; each batch is converted as it is served); before it,
    rows are gathered from the memory-mapped files (caches too large for memory, e.g. ImageNet, see `fits`) and
    moved to the indices' device. Both give bit-identical batches.
    """

    def __init__(self, path: Path, meta: CacheMeta, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
        self.path = path
        self.meta = meta
        self._np = arrays
        self._cosines: Tensor | None = None  # [N, V, C] float32 on the device, after to_device
        self._image_emb: Tensor | None = None  # [N, V, E] float16 as stored
        self._aug: Tensor | None = None  # [N, V, 3] int16 as stored

    @classmethod
    def open(cls, path: str | Path) -> TargetCache:
        path = Path(path)
        meta = read_meta(path)
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name, (dtype, rank) in ARRAY_FILES.items():
            f = path / name
            if not f.is_file():
                raise RichKDError(f"target cache {path} is incomplete: {name} is missing; {_rebuild_hint(path)}")
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise RichKDError(f"target cache {path}: {name} is corrupt ({exc}); {_rebuild_hint(path)}") from None
            if arr.dtype != np.dtype(dtype) or arr.ndim != rank:
                raise RichKDError(
                    f"target cache {path}: {name} is {arr.dtype} rank {arr.ndim}, expected {dtype} rank {rank}; "
                    + _rebuild_hint(path)
                )
            arrays[name] = arr
        check_shapes(meta, {k: a.shape for k, a in arrays.items()})
        return cls(path, meta, arrays)

    @property
    def n_views(self) -> int:
        return self.meta.n_views

    @property
    def class_emb(self) -> Tensor:
        """[C, E] float32 prompt-ensembled class embeddings (CPU)."""
        return torch.from_numpy(np.array(self._np["class_emb.npy"]))

    def all_cosines(self, view: int | None = None) -> Tensor:
        """Every row's cosines as a CPU float32 tensor: [N, C] for one view (e.g. `meta.plain_view`), [N, V, C] for
        all (view=None)."""
        arr = self._np["cosines.npy"]
        return torch.from_numpy(np.array(arr if view is None else arr[:, view]))

    def validate(self, *, dataset: str, split: str, n_rows: int, class_names: Sequence[str]) -> None:
        """Refuse to serve a run whose data differ from what the cache was built for (`n_rows`: the whole split)."""
        m = self.meta
        built = f"{m.dataset}/{m.split} ({m.rows_in_split} rows)"
        used = f"{dataset}/{split} ({n_rows} rows)"
        fix = _rebuild_hint(self.path)
        if (m.dataset, m.split, m.rows_in_split) != (dataset, split, n_rows):
            raise RichKDError(f"target cache {self.path} was built for {built} but the run uses {used}: {fix}")
        names = tuple(class_names)
        if names != m.class_names:
            if sorted(names) == sorted(m.class_names):
                first = next(i for i, (a, b) in enumerate(zip(names, m.class_names, strict=True)) if a != b)
                what = f"class order differs (class {first}: cache {m.class_names[first]!r}, run {names[first]!r})"
            else:
                what = f"class names differ ({len(m.class_names)} in the cache, {len(names)} in the run)"
            raise RichKDError(f"target cache {self.path} does not match {used}: {what}; {fix}")

    def cache_rows(self, split_labels: Tensor, run_rows: Tensor | None) -> Tensor | None:
        """The cache row of each of the run's rows (`run_rows`: full-split ids; None = the whole split).

        None means the identity (the cache covers the whole split). Raises when the run uses rows that the cache
        does not hold, e.g. a cache built with `--limit 1000` for a run with `data.train_limit=10000`.
        """
        m = self.meta
        return map_cache_rows(
            self.path, m.subset_limit, m.rows_sha256, m.describe_rows(), split_labels, run_rows,
            what="target cache", rebuild=_rebuild_hint(self.path),
        )

    def fits(self, device: torch.device | str, fraction: float = 0.5) -> bool:
        """Whether `to_device` would leave room: the stored arrays take at most `fraction` of the memory available
        on `device` now (the teacher cache's guard, richkd.caches.residency)."""
        from richkd.caches.residency import fits_in_memory

        return fits_in_memory(self.meta.nbytes, torch.device(device), fraction)

    def to_device(self, device: torch.device | str) -> None:
        """Load every array onto `device` in its stored dtype (fp32 cosines, fp16 embeddings, int16 aug params):
        half the resident bytes of upcasting, and `lookup` converts only the batch it serves."""
        device = torch.device(device)
        # read, not copied out of the memory map: the mapped file's pages would count twice in the peak RSS
        load = {name: torch.from_numpy(np.load(self.path / name, allow_pickle=False)).to(device)
                for name in ("cosines.npy", "image_emb.npy", "aug_params.npy")}
        for name, t in load.items():
            if t.shape != self._np[name].shape or t.dtype != _TORCH_DTYPES[ARRAY_FILES[name][0]]:
                raise RichKDError(f"target cache {self.path}: {name} changed on disk since it was opened")
        self._cosines, self._image_emb, self._aug = load["cosines.npy"], load["image_emb.npy"], load["aug_params.npy"]

    @property
    def resident(self) -> bool:
        """Whether the arrays were loaded by `to_device` (else batches are read from the memory-mapped files)."""
        return self._cosines is not None

    @property
    def resident_nbytes(self) -> int:
        """Bytes `to_device` holds (0 when served from the memory-mapped files): the per-view arrays as stored."""
        return sum(t.numel() * t.element_size() for t in (self._cosines, self._image_emb, self._aug) if t is not None)

    def _gather_np(self, name: str, indices: Tensor, views: Tensor) -> Tensor:
        rows = indices.detach().cpu().numpy()
        cols = views.detach().cpu().numpy()
        return torch.from_numpy(np.asarray(self._np[name][rows, cols])).to(indices.device)

    def lookup(self, indices: Tensor, views: Tensor) -> ClipTargets:
        """Targets of rows `indices` [B] at views `views` [B] (both int64): cosines [B, C] float32 and unit image
        embeddings [B, E] float32 (re-normalised after fp16 storage; per row, so the same bits on either path)."""
        if self._cosines is not None and self._image_emb is not None:
            cosines, emb = take_views(self._cosines, indices, views), take_views(self._image_emb, indices, views)
        else:
            cosines = self._gather_np("cosines.npy", indices, views)  # [B, C]
            emb = self._gather_np("image_emb.npy", indices, views)  # [B, E] float16
        return ClipTargets(cosines=cosines, image_emb=torch.nn.functional.normalize(emb.float(), dim=-1))

    def aug_params(self, indices: Tensor, views: Tensor) -> CropFlip:
        """The crop/flip each served view was made with, so the student can be shown the same one."""
        from richkd.data.augment import CropFlip

        aug = self._aug
        params = (
            take_views(aug, indices, views) if aug is not None else self._gather_np("aug_params.npy", indices, views)
        ).long()  # [B, 3]
        return CropFlip(dx=params[:, 0], dy=params[:, 1], flip=params[:, 2].bool())

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"TargetCache({self.path}, {m.dataset}/{m.split}, rows={m.n_rows}, views={m.n_views}, "
            f"classes={m.n_classes}, model={m.model_label})"
        )


def write_random_cache(
    path: str | Path,
    *,
    dataset: str,
    split: str,
    n_rows: int,
    class_names: Sequence[str],
    n_views: int = 1,
    embed_dim: int = 16,
    seed: int = 0,
    label: str = "random (tests and benchmarks only) — not CLIP",
) -> None:
    """A cache of random unit embeddings in the real format, labelled random: for tests and speed benchmarks,
    where the content does not matter but the shapes, dtypes and provenance checks do."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_rows, n_views, embed_dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    class_emb = rng.standard_normal((len(class_names), embed_dim), dtype=np.float32)
    class_emb /= np.linalg.norm(class_emb, axis=-1, keepdims=True)
    aug = np.zeros((n_rows, n_views, 3), dtype=np.int16)
    aug[..., :2] = 4  # every view is the plain (pad, pad, no flip) crop
    meta = CacheMeta(
        dataset=dataset,
        split=split,
        n_rows=n_rows,
        class_names=tuple(class_names),
        n_views=n_views,
        view_names=("plain", *(f"aug{i}" for i in range(n_views - 1))),
        model_id=f"random-{seed}",
        model_kind="random",
        model_label=label,
        weights_sha256="0" * 64,
        templates=("a photo of a {}.",),
        templates_sha256="0" * 64,
        clean_names=True,
        embed_dim=embed_dim,
        image_size=32,
    )
    write_target_cache(
        path,
        cosines=emb @ class_emb.T,
        image_emb=emb.astype(np.float16),
        aug_params=aug,
        class_emb=class_emb,
        meta=meta,
    )

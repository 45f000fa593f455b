"""Build the caches a distillation run reads: a vision-language teacher's target cache (cosines and image
embeddings of every row x view) and a frozen CNN teacher's cache (logits and pooled features)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.caches.teacher import TeacherCacheMeta
    from richkd.data import FolderOptions

log = logging.getLogger("richkd")

__all__ = [
    "ImageNetCacheResult",
    "TeacherCacheResult",
    "VLMCacheResult",
    "build_imagenet_cache",
    "build_teacher_cache",
    "build_vlm_cache",
    "merge_cache_parts",
]

IMAGENET_TRAIN_ROWS = 1_281_167  # ILSVRC-2012 train images, for the size statement


@dataclass(frozen=True)
class VLMCacheResult:
    """A built target cache: where, of which data, with which teacher, and how long the build took."""

    path: Path
    dataset: str
    split: str
    rows: int
    teacher: str
    seconds: float


@dataclass(frozen=True)
class ImageNetCacheResult:
    """A streamed (sharded) target cache build: where it went, the rows [lo, hi) this call covered of `n_rows`,
    the teacher, and how long it took (including resumed or skipped rows)."""

    path: Path
    split: str
    n_rows: int
    lo: int
    hi: int
    teacher: str
    seconds: float


@dataclass(frozen=True)
class TeacherCacheResult:
    """A built teacher cache and its layout (rows x views x (logits + features), float16)."""

    path: Path
    arch: str
    dataset: str
    split: str
    rows: int
    meta: TeacherCacheMeta
    seconds: float


def build_vlm_cache(
    out: str | Path, *, dataset: str, root: str | None = None, split: str = "train", limit: int | None = None,
    teacher: str = "surrogate", weights: str | None = None, templates: str | None = None, clean_names: bool = True,
    views: int | Literal["all"] = 0, pad: int = 4, include_flip: bool = True, seed: int = 0,
    batch_size: int = 256, device: str = "cpu", bf16: bool | None = None, download: bool = False,
    checkpoint_seconds: float = 30.0, folder: FolderOptions | None = None,
) -> VLMCacheResult:
    """A vision-language teacher's target cache of `dataset/split` (a stratified subset of `limit` rows), for
    `vlm.cache=OUT` in a RichKD run; a killed build resumes. `teacher`: surrogate (offline, a stand-in for CLIP,
    not CLIP) | random[:SEED] | open_clip:ARCH | hf:PATH_OR_HUB_ID. `views`: random crop/flip views beyond
    plain/flip, or "all" (every crop offset x flip). `bf16` None: on where it is fast."""
    from richkd.caches.build_target import build_target_cache
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.engine.device import bf16_is_fast, check_device
    from richkd.engine.io import check_writable
    from richkd.teachers.imagenet_names import resolve_templates
    from richkd.teachers.vlm import load_vlm

    if dataset == "imagenet":
        raise RichKDError("ImageNet target caches are streamed and sharded: use build_imagenet_cache "
                          "(`richkd vlm cache --dataset imagenet`)")
    out = Path(out)
    check_writable(out, "--out")
    use_bf16 = bf16_is_fast(check_device(device)) if bf16 is None else bf16
    ds, rows = limited(load_dataset(dataset, root, split, download=download, folder=folder), limit)
    prompts = resolve_templates(templates)
    vlm = load_vlm(teacher, device=device, weights=weights)
    log.info("teacher: %s (%s)", vlm.label, vlm.model_id)
    t0 = time.perf_counter()
    exact = views == "all"
    path = build_target_cache(
        vlm, ds, out, templates=prompts, clean_names=clean_names, n_aug_views=0 if exact else int(views),
        include_flip=include_flip, batch_size=batch_size, seed=seed, bf16=use_bf16, device=device, subset=rows,
        checkpoint_seconds=checkpoint_seconds, exact_views=exact, pad=pad,
    )
    return VLMCacheResult(path=Path(path), dataset=ds.name, split=ds.split, rows=len(ds), teacher=vlm.label,
                          seconds=time.perf_counter() - t0)


def build_teacher_cache(
    out: str | Path, *, checkpoint: str | Path, arch: str, dataset: str, root: str | None = None,
    split: str = "train", limit: int | None = None, pad: int = 4, cache_dir: str | Path | None = None,
    batch_size: int = 1024, device: str = "cpu", bf16: bool = False, channels_last: bool = True,
    download: bool = False, checkpoint_seconds: float = 30.0, folder: FolderOptions | None = None,
    allow_code: bool = False,
) -> TeacherCacheResult:
    """A frozen CNN teacher's logits and pooled features for every row x crop/flip view of `dataset/split`,
    for `model.teacher_cache=OUT`; a killed build resumes. `checkpoint` is the teacher run's model_last.pt (or a
    bare timm/torchvision/Lite0 state dict); the teacher is loaded as a training run loads it, resized and
    renormalised to its own input when that differs from the dataset's. `allow_code`: the opt-in that a
    `module:PKG.MOD:FACTORY` teacher may import and run user code."""
    from richkd.caches.build_teacher import build_teacher_cache as build
    from richkd.caches.build_teacher import plan_teacher_cache
    from richkd.data import load_dataset
    from richkd.data.arrays import ArrayDataset
    from richkd.data.subset import limited
    from richkd.engine.checkpoint import read_model_file
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable, file_sha256
    from richkd.models.external import NativeInput
    from richkd.teachers.cnn import load_frozen_teacher

    out = Path(out)
    check_writable(out, "--out")
    torch_device = check_device(device)
    if pad < 0:
        raise RichKDError(f"--pad must be >= 0 (got {pad})")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RichKDError(f"--checkpoint {checkpoint} does not exist: pass the teacher's model_last.pt")
    read_model_file(checkpoint)  # corrupt or hostile: fail before the dataset is decoded
    full = load_dataset(dataset, root, split, download=download,
                        cache_dir=Path(cache_dir) if cache_dir is not None else None, folder=folder)
    if not isinstance(full, ArrayDataset):
        raise RichKDError(f"a teacher cache holds an in-memory dataset; {full.name} is streamed from disk: "
                          "run its teacher online (leave model.teacher_cache unset)")
    ds, rows = limited(full, limit)
    height, width = (int(v) for v in ds.images.shape[-2:])
    teacher = load_frozen_teacher(arch, checkpoint, ds.classes, torch_device, allow_code=allow_code,
                                  student_input=NativeInput((height, width), ds.mean, ds.std))
    feature_dim = int(teacher.feature_dim)  # type: ignore[arg-type]  # a ZooModel's, or its input adapter's
    meta = plan_teacher_cache(
        ds, arch=arch, checkpoint_sha256=file_sha256(checkpoint), feature_dim=feature_dim,
        pad=pad, bf16=bf16, subset=rows,
    )
    log.info("teacher cache %s: %d rows x %d views x (%d logits + %d features) in float16 = %.2f GiB", out, len(ds),
             meta.n_views, meta.n_classes, meta.feature_dim, meta.nbytes / 2**30)
    t0 = time.perf_counter()
    build(teacher, ds, out, meta, batch_size=batch_size, device=torch_device, channels_last=channels_last,
          checkpoint_seconds=checkpoint_seconds)
    return TeacherCacheResult(path=out, arch=arch, dataset=ds.name, split=ds.split, rows=len(ds), meta=meta,
                              seconds=time.perf_counter() - t0)



def build_imagenet_cache(
    out: str | Path, *, root: str | Path, split: str = "train", classes: str | None = None,
    class_names: str = "torchvision", teacher: str = "surrogate", weights: str | None = None,
    templates: str | None = None, clean_names: bool = True, include_flip: bool = True, shard: str | None = None,
    workers: int = 0, batch_size: int = 256, device: str = "cpu", bf16: bool | None = None,
    checkpoint_seconds: float = 30.0, merge: bool = True, announce: Callable[[str], None] | None = None,
) -> ImageNetCacheResult:
    """A vision-language teacher's target cache of an ImageNet split streamed from `root` (a `<wnid>/` folder or
    a folder of `*.tar` shards), plain and flip views of every row; a killed build resumes. `shard` "I/N" builds
    only part I of N (contiguous rows) into OUT/parts/, and the last part to finish merges them unless `merge` is
    False. `classes`: the head's wnids (a file or wnid,wnid,...; default all 1000). `announce` receives the size
    statement before any work (default: the richkd log)."""
    from richkd.caches.stream import build_stream_cache, make_recipe, open_source, parse_part, part_range
    from richkd.caches.stream_layout import cache_bytes
    from richkd.engine.device import bf16_is_fast, check_device
    from richkd.engine.io import check_writable
    from richkd.teachers.imagenet_names import read_class_list, resolve_templates, wnid_to_name
    from richkd.teachers.vlm import load_vlm
    from richkd.teachers.zero_shot import class_embeddings

    check_writable(Path(out), "--out")
    torch_device = check_device(device)
    use_bf16 = bf16_is_fast(torch_device) if bf16 is None else bf16
    part = parse_part(shard) if shard else None
    wnids = read_class_list(classes)
    names = wnid_to_name(class_names)
    prompt_names = tuple(names[w] for w in wnids)
    prompts = resolve_templates(templates)
    source = open_source(root, wnids)
    vlm = load_vlm(teacher, device=torch_device, weights=weights)
    class_emb = class_embeddings(vlm, prompt_names, prompts, clean_names=clean_names)  # [C, E]
    recipe = make_recipe(vlm, source, dataset="imagenet", split=split, classes=wnids, prompt_names=prompt_names,
                         templates=prompts, clean_names=clean_names, include_flip=include_flip,
                         embed_dim=int(class_emb.shape[1]))
    m = recipe.meta
    lo, hi = part_range(m.n_rows, *part) if part else (0, m.n_rows)

    def gib(rows: int) -> str:
        return f"{cache_bytes(rows, m.n_views, m.n_classes, m.embed_dim) / 2**30:.2f} GiB"

    (announce or log.info)(
        f"target cache: {m.n_rows} rows x {m.n_views} views, {m.n_classes} classes, {m.embed_dim}-d: "
        f"{gib(m.n_rows)} (this part, rows {lo}..{hi - 1}: {gib(hi - lo)}; "
        f"ImageNet's {IMAGENET_TRAIN_ROWS:,} train rows at this recipe: {gib(IMAGENET_TRAIN_ROWS)})"
    )
    t0 = time.perf_counter()
    path = build_stream_cache(
        vlm, source, Path(out), recipe, class_emb=class_emb, part=part, batch_size=batch_size, workers=workers,
        bf16=use_bf16, device=torch_device, checkpoint_seconds=checkpoint_seconds, auto_merge=merge,
    )
    return ImageNetCacheResult(path=Path(path), split=split, n_rows=m.n_rows, lo=lo, hi=hi, teacher=vlm.label,
                               seconds=time.perf_counter() - t0)


def merge_cache_parts(parts: Sequence[str | Path], out: str | Path, *, delete_parts: bool = False) -> Path:
    """One target cache at `out` from the parts of a sharded `build_imagenet_cache` (OUT/parts/part-*), checked to
    be parts of one build covering every row once; `delete_parts` removes them after a successful merge."""
    from richkd.caches.stream_merge import merge_parts

    return merge_parts([Path(p) for p in parts], Path(out), delete_parts=delete_parts)

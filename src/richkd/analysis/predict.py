"""One predictor's logits on a split, written as a predictions file (docs/analysis_formats.md): a model file,
a vision-language model zero-shot, a target cache, the fused teacher α·z_T + (1 − α)·s·z_C, or the control α·z_T.

Predictors (`PredictOptions` fields that select them):
  checkpoint                              a model file (student or CNN teacher)        kind checkpoint | teacher
  vlm                                     zero-shot s · cos(image, class text)         kind vlm
  cache                                   a target cache's view-0 cosines · s          kind cache
  checkpoint + cache|vlm + alpha          α·z_T + (1 − α)·s·z_C (fuse_logits)          kind fused
  checkpoint + alpha + no_vlm             the control α·z_T                            kind scaled_teacher
Every combination that contradicts itself is one RichKDError naming the fix, before any model runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from richkd import __version__
from richkd.engine.io import file_sha256
from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.caches.target import TargetCache
    from richkd.data import FolderOptions
    from richkd.data.arrays import ArrayDataset
    from richkd.teachers.vlm import VisionLanguageTeacher

__all__ = ["PredictOptions", "PredictResult", "predict_to_file"]


@dataclass(frozen=True)
class PredictOptions:
    """What to predict with and on which rows (the options of `richkd predict`, same names and defaults)."""

    dataset: str
    out: str
    checkpoint: str | None = None
    arch: str | None = None
    kind: str | None = None
    vlm: str | None = None
    vlm_weights: str | None = None
    templates: str | None = None
    clean_names: bool = True
    cache: str | None = None
    alpha: float | None = None
    no_vlm: bool = False
    vlm_scale: float | None = None
    root: str | None = None
    split: str = "test"
    limit: int | None = None
    features: bool = False
    name: str | None = None
    batch_size: int = 256
    bf16: bool = False
    folder: FolderOptions | None = None  # how an image folder is read (size, resize, split, names)
    device: str = "cpu"
    allow_code: bool = False  # the opt-in that a module:PKG.MOD:FACTORY checkpoint may run user code


@dataclass(frozen=True)
class PredictResult:
    """The predictions file written, its provenance and the predictor's top-1 (%) on the rows it predicted."""

    path: Path
    kind: str
    top1: float
    rows: int
    seconds: float
    provenance: dict[str, Any]


def _predict_kind(opts: PredictOptions) -> str:
    """The predictor kind the flags ask for; RichKDError naming the fix for every contradictory combination."""
    ckpt, vlm, cache = opts.checkpoint is not None, opts.vlm is not None, opts.cache is not None
    if vlm and cache:
        raise RichKDError("give --vlm or --cache, not both (the cache already holds a model's outputs)")
    if opts.no_vlm and (vlm or cache):
        raise RichKDError("--no-vlm is the control without a vision-language term: drop --vlm/--cache")
    if opts.vlm_weights is not None and not vlm:
        raise RichKDError("--vlm-weights needs --vlm")
    if (opts.templates is not None or not opts.clean_names) and not vlm:
        raise RichKDError("--templates and --no-clean-names apply to --vlm only (a cache fixed its prompts)")
    if opts.alpha is not None and not 0.0 <= opts.alpha <= 1.0:
        raise RichKDError(f"--alpha must be in [0, 1], got {opts.alpha}")
    if opts.vlm_scale is not None and not opts.vlm_scale > 0:
        raise RichKDError(f"--vlm-scale must be > 0, got {opts.vlm_scale}")
    if opts.batch_size < 1:
        raise RichKDError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if not ckpt:
        if not (vlm or cache):
            raise RichKDError("nothing to predict with: give --checkpoint, --vlm or --cache")
        if opts.alpha is not None or opts.no_vlm:
            raise RichKDError("--alpha / --no-vlm fuse a teacher: add --checkpoint TEACHER")
        if opts.arch is not None or opts.kind is not None:
            raise RichKDError("--arch / --kind describe a --checkpoint: drop them or add --checkpoint")
        if cache and opts.vlm_scale is None:
            raise RichKDError("--cache alone needs --vlm-scale S (a cache stores raw cosines; CLIP uses 100)")
        return "vlm" if vlm else "cache"
    if vlm or cache or opts.no_vlm:
        if opts.alpha is None:
            raise RichKDError("a fused teacher needs --alpha A (the reference uses 0.7)")
        if opts.kind is not None:
            raise RichKDError("--kind labels a plain model file; a fused teacher is kind fused/scaled_teacher")
        if opts.no_vlm:
            if opts.vlm_scale is not None:
                raise RichKDError("--no-vlm has no vision-language term: drop --vlm-scale")
            return "scaled_teacher"
        if opts.features:
            raise RichKDError("the fused teacher has no feature vector without a distiller's trained projections: "
                              "drop --features (or predict the teacher and the vision-language model apart)")
        return "fused"
    if opts.alpha is not None:
        raise RichKDError("--alpha needs --vlm/--cache (fused teacher) or --no-vlm (control)")
    if opts.vlm_scale is not None:
        raise RichKDError("--vlm-scale needs --vlm or --cache")
    return str(opts.kind or "checkpoint")


def _default_name(out: Path) -> str:
    name = out.name
    for suffix in (".safetensors", ".preds"):
        name = name.removesuffix(suffix)
    return name


def _run_model(
    model: torch.nn.Module, images: Tensor, mean: tuple[float, float, float], std: tuple[float, float, float],
    *, batch_size: int, device: torch.device,
) -> tuple[Tensor, Tensor]:
    """(logits [N, C], pooled [N, D]) of a zoo model in eval mode, float32, on CPU."""
    from richkd.data.augment import normalize

    model = model.to(device).eval()
    logits, pooled = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            out = model(x)
            logits.append(out.logits.float().cpu())
            pooled.append(out.pooled.float().cpu())
    return torch.cat(logits), torch.cat(pooled)


def _cache_outputs(cache: TargetCache, full: ArrayDataset, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(cosines [N, C], image_emb [N, E]) of the plain view for full-split `rows` (a subset cache is mapped)."""
    cache_rows = cache.cache_rows(full.labels, rows)
    index = rows if cache_rows is None else cache_rows
    targets = cache.lookup(index, torch.full_like(index, cache.meta.plain_view))
    return targets.cosines.float(), targets.image_emb.float()


def _cache_provenance(cache: TargetCache) -> dict[str, Any]:
    m = cache.meta
    return {"cache": str(cache.path), "cache_model_id": m.model_id, "cache_model_label": m.model_label,
            "cache_weights_sha256": m.weights_sha256, "cache_templates_sha256": m.templates_sha256,
            "cache_view": m.view_names[m.plain_view], "cache_view_index": m.plain_view}


@dataclass
class _Sources:
    """Everything `predict` reads, opened and checked against the data before any model runs."""

    full: ArrayDataset  # the whole split
    ds: ArrayDataset  # the rows predicted (a stratified subset with --limit)
    rows: Tensor  # [N] their full-split ids
    limit: int | None
    model: torch.nn.Module | None = None
    arch: str | None = None
    cache: TargetCache | None = None
    vlm: VisionLanguageTeacher | None = None
    templates: tuple[str, ...] = ()


def _open_sources(opts: PredictOptions) -> _Sources:
    """Check paths first (cheap), then load the split and every source, validating each against it."""
    from richkd.caches.target import TargetCache, read_meta
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.engine.checkpoint import read_model_file
    from richkd.models.files import model_from_file
    from richkd.teachers.prompts import DEFAULT_TEMPLATES, load_templates

    ckpt = Path(opts.checkpoint) if opts.checkpoint else None
    if ckpt is not None:
        read_model_file(ckpt)  # missing or corrupt: fail before the dataset is decoded
    if opts.cache is not None:
        read_meta(opts.cache)
    templates = load_templates(opts.templates) if opts.templates else DEFAULT_TEMPLATES
    full = load_dataset(opts.dataset, opts.root, opts.split, folder=opts.folder)
    ds, subset = limited(full, opts.limit)
    src = _Sources(full=full, ds=ds, rows=subset.rows if subset is not None else torch.arange(len(full)),
                   limit=None if subset is None else subset.limit, templates=templates)
    if ckpt is not None:
        src.model, src.arch = model_from_file(ckpt, full.classes, arch=opts.arch, allow_code=opts.allow_code)
    if opts.cache is not None:
        src.cache = TargetCache.open(opts.cache)
        src.cache.validate(dataset=full.name, split=full.split, n_rows=len(full), class_names=full.classes)
    if opts.vlm is not None:
        from richkd.teachers.vlm import load_vlm

        src.vlm = load_vlm(opts.vlm, device=opts.device, weights=opts.vlm_weights)
    return src


def _compute(kind: str, src: _Sources, opts: PredictOptions, device: torch.device) -> tuple[
    Tensor, Tensor | None, float | None, dict[str, Any]
]:
    """(logits, features, vlm scale s or None, provenance of the vision-language side) of the predictor."""
    from richkd.fusion import fuse_logits

    teacher_logits = features = cosines = None
    prov: dict[str, Any] = {}
    if src.model is not None:
        teacher_logits, features = _run_model(src.model, src.ds.images, src.ds.mean, src.ds.std,
                                              batch_size=opts.batch_size, device=device)
    own_scale = None
    if src.cache is not None:
        cosines, image_emb = _cache_outputs(src.cache, src.full, src.rows)
        prov = _cache_provenance(src.cache)
    elif src.vlm is not None:
        from richkd.teachers.prompts import templates_sha256
        from richkd.teachers.zero_shot import class_embeddings
        from richkd.teachers.zero_shot_eval import encode_split

        vlm = src.vlm
        class_emb = class_embeddings(vlm, src.ds.classes, src.templates, clean_names=opts.clean_names).cpu()
        image_emb = encode_split(vlm, src.ds, batch_size=opts.batch_size, device=device, bf16=opts.bf16)
        cosines, own_scale = image_emb @ class_emb.t(), float(vlm.logit_scale)
        prov = {"vlm": opts.vlm, "vlm_model_id": vlm.model_id, "vlm_label": vlm.label,
                "vlm_fingerprint": vlm.fingerprint(), "templates_sha256": templates_sha256(src.templates),
                "n_templates": len(src.templates), "clean_names": opts.clean_names}
    if kind in ("checkpoint", "teacher", "scaled_teacher"):
        assert teacher_logits is not None
        if kind == "scaled_teacher":
            assert opts.alpha is not None  # _predict_kind requires it
            return opts.alpha * teacher_logits, features, None, prov
        return teacher_logits, features, None, prov
    assert cosines is not None
    scale = opts.vlm_scale if opts.vlm_scale is not None else (1.0 if kind == "fused" else own_scale)
    assert scale is not None
    if kind == "fused":
        assert teacher_logits is not None and opts.alpha is not None  # _predict_kind requires both
        return fuse_logits(teacher_logits, cosines, opts.alpha, scale), None, scale, prov
    return scale * cosines, image_emb, scale, prov


def _provenance(
    kind: str, src: _Sources, opts: PredictOptions, scale: float | None, vlm_prov: dict[str, Any]
) -> dict[str, Any]:
    """The predictions file's provenance (docs/analysis_formats.md), with checksums of every source."""
    from richkd.data.subset import SUBSET_RULE

    sources: list[dict[str, Any]] = []
    ckpt_sha = None
    if opts.checkpoint is not None:
        ckpt_sha = file_sha256(Path(opts.checkpoint))
        sources.append({"kind": "checkpoint", "path": opts.checkpoint, "arch": src.arch, "sha256": ckpt_sha})
    if src.cache is not None:
        sources.append({"kind": "cache", "path": str(src.cache.path), "model_id": src.cache.meta.model_id,
                        "weights_sha256": src.cache.meta.weights_sha256})
    elif src.vlm is not None:
        sources.append({"kind": "vlm", "spec": opts.vlm, "model_id": src.vlm.model_id,
                        "fingerprint": vlm_prov["vlm_fingerprint"]})
    return {
        "name": opts.name or _default_name(Path(opts.out)),
        "kind": kind,
        "arch": src.arch if src.arch is not None else vlm_prov.get("vlm_model_id", vlm_prov.get("cache_model_id")),
        "checkpoint_sha256": ckpt_sha,
        "dataset": src.full.name,
        "split": src.full.split,
        "source": src.full.source,  # recorded, not compared: the same data may live at other paths elsewhere
        "view": "plain",
        "classes": list(src.full.classes),
        "n_rows_split": len(src.full),
        "n_rows": len(src.ds),
        "limit": src.limit,
        **({"subset_rule": SUBSET_RULE} if src.limit is not None else {}),
        "vlm_scale": scale,
        **({"alpha": opts.alpha, "sources": sources} if kind in ("fused", "scaled_teacher") else {}),
        **({"checkpoint": opts.checkpoint} if opts.checkpoint is not None else {}),
        **vlm_prov,
        "richkd_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def predict_to_file(opts: PredictOptions) -> PredictResult:
    """Check every input and the output's writability, run the predictor, write `opts.out` atomically."""
    from richkd.analysis.metrics import topk_accuracy
    from richkd.analysis.predictions import write_predictions
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable

    kind = _predict_kind(opts)
    device = check_device(opts.device)
    out = Path(opts.out)
    if out.is_dir():
        raise RichKDError(f"--out {out} is a folder: give a file name, e.g. {out / 'model.preds.safetensors'}")
    check_writable(out.parent, "--out")
    src = _open_sources(opts)
    t0 = time.perf_counter()
    logits, features, scale, vlm_prov = _compute(kind, src, opts, device)
    seconds = time.perf_counter() - t0
    provenance = _provenance(kind, src, opts, scale, vlm_prov)
    write_predictions(out, logits=logits, labels=src.ds.labels, rows=src.rows, provenance=provenance,
                      features=features if opts.features else None)
    top1 = topk_accuracy(logits, src.ds.labels, (1,))[1]
    return PredictResult(path=out, kind=kind, top1=float(top1), rows=len(src.ds), seconds=seconds,
                         provenance=provenance)

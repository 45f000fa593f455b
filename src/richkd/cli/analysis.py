"""`richkd predict` (one predictions file per predictor) and `richkd analyze` (analysis.json + analysis.md).

Thin: parse, check every input and the output's writability before any model runs, call the library, write.
RichKDError propagates to `richkd.cli.app.main`, which prints one line and exits 2.

Predictors of `predict` (docs/analysis_formats.md):
  --checkpoint T                         a model file (student or CNN teacher)        kind checkpoint | teacher
  --vlm SPEC                             zero-shot s · cos(image, class text)         kind vlm
  --cache DIR                            a target cache's view-0 cosines · s          kind cache
  --checkpoint T --cache DIR|--vlm SPEC --alpha A   α·z_T + (1 − α)·s·z_C (fuse_logits)  kind fused
  --checkpoint T --alpha A --no-vlm      the control α·z_T                            kind scaled_teacher
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from richkd import __version__
from richkd.cli.args import (
    add_folder_args,
    check_out_file,
    count_int,
    folder_for,
    positive_float,
    threads_int,
    unit_float,
)
from richkd.engine.io import file_sha256
from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.caches.target import TargetCache
    from richkd.data.arrays import ArrayDataset
    from richkd.teachers.vlm import VisionLanguageTeacher

__all__ = ["add_analysis_parsers", "cmd_predict", "cmd_analyze"]

VLM_HELP = "surrogate | random[:SEED] | open_clip:ARCH | hf:PATH_OR_HUB_ID"


def add_analysis_parsers(subparsers: Any) -> None:
    """Register `richkd predict` and `richkd analyze` on the main CLI's subparsers."""
    p = subparsers.add_parser("predict", help="write one predictor's logits on a split as a predictions file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model file (trained student or CNN teacher)")
    p.add_argument("--arch", default=None, help="architecture, if the file does not record it (or to override)")
    p.add_argument("--kind", choices=("checkpoint", "teacher"), default=None,
                   help="label a plain model file as a teacher in the provenance (default: checkpoint)")
    p.add_argument("--vlm", default=None, help=f"vision-language model for zero-shot logits: {VLM_HELP}")
    p.add_argument("--vlm-weights", default=None, help="open_clip: local checkpoint file or pretrained tag")
    p.add_argument("--templates", default=None, help="prompt template file for --vlm (default: the 12 templates)")
    p.add_argument("--no-clean-names", dest="clean_names", action="store_false",
                   help="--vlm: feed raw class names (underscores kept), as the reference code does")
    p.add_argument("--cache", default=None, help="target cache directory of this split (its plain view is used)")
    p.add_argument("--alpha", type=unit_float, default=None, help="α of the fused teacher α·z_T + (1 − α)·s·z_C")
    p.add_argument("--no-vlm", action="store_true", help="with --checkpoint and --alpha: the control α·z_T")
    p.add_argument("--vlm-scale", type=positive_float, default=None,
                   help="s multiplying the cosines (default: the model's own for --vlm, 1 when fused as the "
                        "reference does; required for --cache alone)")
    p.add_argument("--dataset", required=True, help="cifar10 | cifar100 | imagefolder | fashion_mnist")
    p.add_argument("--root", default=None, help="dataset root (folder or archive)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=count_int, default=None,
                   help="a stratified subset of N rows; rows keep their ids in the full split")
    p.add_argument("--features", action="store_true",
                   help="also store pooled penultimate features (the image embedding for --vlm/--cache)")
    p.add_argument("--name", default=None, help="predictor name (default: --out's file name without .preds...)")
    p.add_argument("--batch-size", type=count_int, default=256)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast for the --vlm image tower (default float32: exact, and on CPUs without "
                        "native bf16 several times faster; CNNs always run in float32)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="predictions file to write, e.g. teacher.preds.safetensors")
    add_folder_args(p)
    p.set_defaults(func=cmd_predict, interrupt_hint="nothing was written")

    a = subparsers.add_parser("analyze", help="calibration, quadrants, consistency, agreement of predictions files",
                              description="Writes DIR/analysis.json and DIR/analysis.md. When the names include "
                              "both 'teacher' and 'fused', the flow teacher:fused is added automatically; a "
                              "predictor named 'teacher' is the default --reference.")
    a.add_argument("predictions", nargs="+", help="predictions files written by `richkd predict`")
    a.add_argument("--names", default=None, help="comma-separated names, one per file (default: their own)")
    a.add_argument("--tau", type=unit_float, default=0.5, help="confidence threshold τ of the quadrants")
    a.add_argument("--n-bins", type=count_int, default=15, help="calibration bins")
    a.add_argument("--flow", action="append", default=[], metavar="FROM:TO", help="quadrant flow; repeatable")
    a.add_argument("--agreement", action="append", default=[], metavar="REF:OTHER",
                   help="top-1 agreement and KL(REF ‖ OTHER); repeatable")
    a.add_argument("--semantic", default=None, metavar="vlm:SPEC | cache:DIR",
                   help="class-name similarity from a model's text tower or a target cache's class embeddings")
    a.add_argument("--templates", default=None, help="prompt template file for --semantic vlm:... (default: 12)")
    a.add_argument("--reference", default=None, help="predictor the others' class matrices are compared with")
    a.add_argument("--device", default="cpu", help="device of the --semantic vlm text tower")
    a.add_argument("--out", required=True, help="output directory")
    a.set_defaults(func=cmd_analyze, interrupt_hint="nothing was written")


def _predict_kind(args: argparse.Namespace) -> str:
    """The predictor kind the flags ask for; RichKDError naming the fix for every contradictory combination."""
    ckpt, vlm, cache = args.checkpoint is not None, args.vlm is not None, args.cache is not None
    if vlm and cache:
        raise RichKDError("give --vlm or --cache, not both (the cache already holds a model's outputs)")
    if args.no_vlm and (vlm or cache):
        raise RichKDError("--no-vlm is the control without a vision-language term: drop --vlm/--cache")
    if args.vlm_weights is not None and not vlm:
        raise RichKDError("--vlm-weights needs --vlm")
    if (args.templates is not None or not args.clean_names) and not vlm:
        raise RichKDError("--templates and --no-clean-names apply to --vlm only (a cache fixed its prompts)")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise RichKDError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.vlm_scale is not None and not args.vlm_scale > 0:
        raise RichKDError(f"--vlm-scale must be > 0, got {args.vlm_scale}")
    if args.batch_size < 1:
        raise RichKDError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not ckpt:
        if not (vlm or cache):
            raise RichKDError("nothing to predict with: give --checkpoint, --vlm or --cache")
        if args.alpha is not None or args.no_vlm:
            raise RichKDError("--alpha / --no-vlm fuse a teacher: add --checkpoint TEACHER")
        if args.arch is not None or args.kind is not None:
            raise RichKDError("--arch / --kind describe a --checkpoint: drop them or add --checkpoint")
        if cache and args.vlm_scale is None:
            raise RichKDError("--cache alone needs --vlm-scale S (a cache stores raw cosines; CLIP uses 100)")
        return "vlm" if vlm else "cache"
    if vlm or cache or args.no_vlm:
        if args.alpha is None:
            raise RichKDError("a fused teacher needs --alpha A (the reference uses 0.7)")
        if args.kind is not None:
            raise RichKDError("--kind labels a plain model file; a fused teacher is kind fused/scaled_teacher")
        if args.no_vlm:
            if args.vlm_scale is not None:
                raise RichKDError("--no-vlm has no vision-language term: drop --vlm-scale")
            return "scaled_teacher"
        if args.features:
            raise RichKDError("the fused teacher has no feature vector without a distiller's trained projections: "
                              "drop --features (or predict the teacher and the vision-language model apart)")
        return "fused"
    if args.alpha is not None:
        raise RichKDError("--alpha needs --vlm/--cache (fused teacher) or --no-vlm (control)")
    if args.vlm_scale is not None:
        raise RichKDError("--vlm-scale needs --vlm or --cache")
    return str(args.kind or "checkpoint")


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


def _load_checkpoint(path: Path, arch: str | None, classes: tuple[str, ...]) -> tuple[torch.nn.Module, str]:
    from richkd.engine.checkpoint import load_model_file, read_model_file
    from richkd.models import create_model

    _, info = read_model_file(path)
    arch = arch or info.get("arch")
    if arch is None:
        raise RichKDError(f"{path} does not record its architecture: pass --arch")
    model = create_model(arch, len(classes))
    load_model_file(path, model, arch=arch, num_classes=len(classes), classes=classes)
    return model, str(arch)


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


def _open_sources(args: argparse.Namespace) -> _Sources:
    """Check paths first (cheap), then load the split and every source, validating each against it."""
    from richkd.caches.target import TargetCache, read_meta
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.engine.checkpoint import read_model_file
    from richkd.teachers.prompts import DEFAULT_TEMPLATES, load_templates

    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is not None:
        read_model_file(ckpt)  # missing or corrupt: fail before the dataset is decoded
    if args.cache is not None:
        read_meta(args.cache)
    templates = load_templates(args.templates) if args.templates else DEFAULT_TEMPLATES
    full = load_dataset(args.dataset, args.root, args.split, folder=folder_for(args, ckpt))
    ds, subset = limited(full, args.limit)
    src = _Sources(full=full, ds=ds, rows=subset.rows if subset is not None else torch.arange(len(full)),
                   limit=None if subset is None else subset.limit, templates=templates)
    if ckpt is not None:
        src.model, src.arch = _load_checkpoint(ckpt, args.arch, full.classes)
    if args.cache is not None:
        src.cache = TargetCache.open(args.cache)
        src.cache.validate(dataset=full.name, split=full.split, n_rows=len(full), class_names=full.classes)
    if args.vlm is not None:
        from richkd.teachers.vlm import load_vlm

        src.vlm = load_vlm(args.vlm, device=args.device, weights=args.vlm_weights)
    return src


def _compute(kind: str, src: _Sources, args: argparse.Namespace, device: torch.device) -> tuple[
    Tensor, Tensor | None, float | None, dict[str, Any]
]:
    """(logits, features, vlm scale s or None, provenance of the vision-language side) of the predictor."""
    from richkd.fusion import fuse_logits

    teacher_logits = features = cosines = None
    prov: dict[str, Any] = {}
    if src.model is not None:
        teacher_logits, features = _run_model(src.model, src.ds.images, src.ds.mean, src.ds.std,
                                              batch_size=args.batch_size, device=device)
    own_scale = None
    if src.cache is not None:
        cosines, image_emb = _cache_outputs(src.cache, src.full, src.rows)
        prov = _cache_provenance(src.cache)
    elif src.vlm is not None:
        from richkd.cli.vlm import _encode_split
        from richkd.teachers.prompts import templates_sha256
        from richkd.teachers.zero_shot import class_embeddings

        vlm = src.vlm
        class_emb = class_embeddings(vlm, src.ds.classes, src.templates, clean_names=args.clean_names).cpu()
        image_emb = _encode_split(vlm, src.ds, args)  # [N, E]
        cosines, own_scale = image_emb @ class_emb.t(), float(vlm.logit_scale)
        prov = {"vlm": args.vlm, "vlm_model_id": vlm.model_id, "vlm_label": vlm.label,
                "vlm_fingerprint": vlm.fingerprint(), "templates_sha256": templates_sha256(src.templates),
                "n_templates": len(src.templates), "clean_names": args.clean_names}
    if kind in ("checkpoint", "teacher", "scaled_teacher"):
        assert teacher_logits is not None
        return (args.alpha * teacher_logits if kind == "scaled_teacher" else teacher_logits), features, None, prov
    assert cosines is not None
    scale = args.vlm_scale if args.vlm_scale is not None else (1.0 if kind == "fused" else own_scale)
    assert scale is not None
    if kind == "fused":
        assert teacher_logits is not None
        return fuse_logits(teacher_logits, cosines, args.alpha, scale), None, scale, prov
    return scale * cosines, image_emb, scale, prov


def _provenance(
    kind: str, src: _Sources, args: argparse.Namespace, scale: float | None, vlm_prov: dict[str, Any]
) -> dict[str, Any]:
    """The predictions file's provenance (docs/analysis_formats.md), with checksums of every source."""
    from richkd.data.subset import SUBSET_RULE

    sources: list[dict[str, Any]] = []
    ckpt_sha = None
    if args.checkpoint is not None:
        ckpt_sha = file_sha256(Path(args.checkpoint))
        sources.append({"kind": "checkpoint", "path": args.checkpoint, "arch": src.arch, "sha256": ckpt_sha})
    if src.cache is not None:
        sources.append({"kind": "cache", "path": str(src.cache.path), "model_id": src.cache.meta.model_id,
                        "weights_sha256": src.cache.meta.weights_sha256})
    elif src.vlm is not None:
        sources.append({"kind": "vlm", "spec": args.vlm, "model_id": src.vlm.model_id,
                        "fingerprint": vlm_prov["vlm_fingerprint"]})
    return {
        "name": args.name or _default_name(Path(args.out)),
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
        **({"alpha": args.alpha, "sources": sources} if kind in ("fused", "scaled_teacher") else {}),
        **({"checkpoint": args.checkpoint} if args.checkpoint is not None else {}),
        **vlm_prov,
        "richkd_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def cmd_predict(args: argparse.Namespace) -> int:
    from richkd.analysis.metrics import topk_accuracy
    from richkd.analysis.predictions import write_predictions
    from richkd.engine.device import check_device

    kind = _predict_kind(args)
    device = check_device(args.device)
    out = Path(args.out)
    if out.is_dir():
        raise RichKDError(f"--out {out} is a folder: give a file name, e.g. {out / 'model.preds.safetensors'}")
    check_out_file(out)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    src = _open_sources(args)
    t0 = time.perf_counter()
    logits, features, scale, vlm_prov = _compute(kind, src, args, device)
    seconds = time.perf_counter() - t0
    provenance = _provenance(kind, src, args, scale, vlm_prov)
    write_predictions(out, logits=logits, labels=src.ds.labels, rows=src.rows, provenance=provenance,
                      features=features if args.features else None)
    top1 = topk_accuracy(logits, src.ds.labels, (1,))[1]
    print(f"{out}: {provenance['name']} ({kind}) on {src.full.name}/{src.full.split}, {len(src.ds)} rows, "
          f"top-1 {top1:.2f} % ({seconds:.1f} s)")
    return 0


def _pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        a, sep, b = v.partition(":")
        if not sep or not a or not b or ":" in b:
            raise RichKDError(f"{option} {v!r} must be two predictor names as A:B")
        out.append((a, b))
    return out


def _semantic(spec: str, classes: tuple[str, ...], args: argparse.Namespace) -> tuple[str, Tensor]:
    """(source description, class embeddings [C, E]) from `vlm:SPEC` or `cache:DIR`."""
    kind, _, arg = spec.partition(":")
    if kind == "cache" and arg:
        from richkd.caches.target import TargetCache

        cache = TargetCache.open(arg)
        if cache.meta.class_names != classes:
            raise RichKDError(f"--semantic cache {arg} was built for other classes or another class order than "
                              "the predictions: use a cache of the same dataset")
        m = cache.meta
        return f"class-name text embeddings of target cache {arg} ({m.model_id}; {len(m.templates)} templates)", \
            cache.class_emb
    if kind == "vlm" and arg:
        from richkd.engine.device import check_device
        from richkd.teachers.prompts import DEFAULT_TEMPLATES, load_templates
        from richkd.teachers.vlm import load_vlm
        from richkd.teachers.zero_shot import class_embeddings

        templates = load_templates(args.templates) if args.templates else DEFAULT_TEMPLATES
        vlm = load_vlm(arg, device=check_device(args.device))
        emb = class_embeddings(vlm, classes, templates, clean_names=True).cpu()
        return f"class-name text embeddings of {vlm.model_id} ({len(templates)} templates)", emb
    raise RichKDError(f"--semantic {spec!r}: use vlm:SPEC (e.g. vlm:surrogate) or cache:DIR")


def cmd_analyze(args: argparse.Namespace) -> int:
    from richkd.analysis.analyze import analyze, check_request, render_summary
    from richkd.analysis.predictions import check_comparable, read_predictions
    from richkd.engine.io import check_writable, write_json_atomic, write_text_atomic

    out = Path(args.out)
    check_writable(out, "--out")
    flows, agreements = _pairs(args.flow, "--flow"), _pairs(args.agreement, "--agreement")
    preds = [read_predictions(p) for p in args.predictions]
    names = [n.strip() for n in args.names.split(",")] if args.names else [p.name for p in preds]
    check_request(names, len(preds), flows=flows, agreements=agreements, reference=args.reference)
    check_comparable(preds)
    semantic = _semantic(args.semantic, preds[0].classes, args) if args.semantic else None
    result = analyze(preds, names, tau=args.tau, flows=flows, agreements=agreements, semantic=semantic,
                     reference=args.reference, n_bins=args.n_bins)
    summary = render_summary(result)
    write_json_atomic(out / "analysis.json", result)
    write_text_atomic(out / "analysis.md", summary)
    print(summary, end="")
    return 0

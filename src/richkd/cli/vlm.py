"""`richkd vlm zeroshot | cache | fit-scale`: the vision-language teacher from the command line.

Thin: parse, call the library, print. RichKDError propagates to `richkd.cli.app.main`, which prints one line.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from richkd.cli.args import (
    add_folder_args,
    check_out_file,
    count_int,
    folder_for,
    nonneg_float,
    pad_int,
    positive_float,
    seed_int,
    threads_int,
)
from richkd.cli.stream_cache import add_cache_merge_parser, add_stream_cache_args
from richkd.engine.io import write_json_atomic

if TYPE_CHECKING:
    from richkd.data.arrays import ArrayDataset
    from richkd.data.subset import SubsetRows
    from richkd.teachers.vlm import VisionLanguageTeacher

log = logging.getLogger(__name__)

TEACHER_HELP = "surrogate | random[:SEED] | open_clip:ARCH (e.g. open_clip:ViT-L-14) | hf:PATH_OR_HUB_ID"


def _add_data_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--dataset", required=True,
                   help="cifar10 | cifar100 | imagefolder | fashion_mnist (| imagenet: streamed, `vlm cache` only)")
    p.add_argument("--root", default=None, help="dataset root (folder or archive)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR when absent (needs network)")
    p.add_argument("--split", default=split)
    p.add_argument("--limit", type=count_int, default=None,
                   help="a stratified subset of exactly N rows (about N/C per class, as data.train_limit=N)")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")
    add_folder_args(p)


def _add_teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="surrogate", help=TEACHER_HELP)
    p.add_argument("--weights", default=None, help="open_clip: local checkpoint file or pretrained tag")
    p.add_argument("--templates", default=None,
                   help="richkd12 (RichKD's 12, the default) | imagenet80 (CLIP's 80) | a file, one per line with {}")
    p.add_argument("--no-clean-names", dest="clean_names", action="store_false",
                   help="feed raw class names (underscores kept), as the reference code does")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA and CPUs with AMX/AVX512-BF16, where it is faster)")
    p.add_argument("--batch-size", type=count_int, default=256)
    p.add_argument("--device", default="cpu")


def add_vlm_parser(subparsers: Any) -> None:
    """Register `richkd vlm ...` on the main CLI's subparsers."""
    vlm = subparsers.add_parser("vlm", help="vision-language teacher: zero-shot eval, target cache, scale fit")
    sub = vlm.add_subparsers(dest="vlm_command", required=True)

    zs = sub.add_parser("zeroshot", help="zero-shot top-1/top-5, NLL, ECE of a teacher on a split")
    _add_data_args(zs, "test")
    _add_teacher_args(zs)
    zs.add_argument("--logit-scale", type=positive_float, action="append", default=None,
                    help="logit scale(s) for NLL/ECE; repeatable (default: 1 and the model's own)")
    zs.add_argument("--out", default=None, help="write the results as JSON here")
    zs.set_defaults(func=cmd_zeroshot, interrupt_hint="nothing was written")

    cache = sub.add_parser("cache", help="build (or resume) a target cache of a split")
    _add_data_args(cache, "train")
    _add_teacher_args(cache)
    cache.add_argument("--out", required=True, help="cache directory")
    cache.add_argument("--views", type=_views_arg, default=0,
                       help="number of random crop/flip views beyond plain/flip, or `all`: every crop offset x flip "
                       "(162 at pad 4; --batch-size then counts images), served exactly with vlm.view_mode=matched")
    cache.add_argument("--pad", type=pad_int, default=4, help="random-crop padding of the runs it serves (data.pad)")
    cache.add_argument("--no-flip", dest="include_flip", action="store_false", help="omit the mirrored view")
    cache.add_argument("--seed", type=seed_int, default=0, help="seed of the random views' crop/flip parameters")
    cache.add_argument("--checkpoint-every", type=nonneg_float, default=30.0, metavar="SECONDS",
                       help="save progress this often (0: after every batch); a killed build resumes from there")
    add_stream_cache_args(cache)
    cache.set_defaults(func=cmd_cache, interrupt_hint="run the same command again to continue the build")
    add_cache_merge_parser(sub)

    fit = sub.add_parser("fit-scale", help="fit the logit scale minimising NLL of cached cosines (train data)")
    _add_data_args(fit, "train")
    fit.add_argument("--cache", required=True, help="target cache directory of that split")
    fit.add_argument("--all-views", action="store_true",
                     help="fit on every cached view, not just the plain one (the cache's meta.plain_view)")
    fit.add_argument("--out", default=None, help="write the result as JSON here")
    fit.set_defaults(func=cmd_fit_scale, interrupt_hint="nothing was written")


def _views_arg(value: str) -> int | str:
    if value == "all":
        return value
    try:
        views = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--views takes a number or `all`, not {value!r}") from None
    if not 0 <= views <= 4096:
        raise argparse.ArgumentTypeError(f"must be in [0, 4096] or `all`, got {value}")
    return views


def _load_data(args: argparse.Namespace) -> tuple[ArrayDataset, SubsetRows | None]:
    """The split (a stratified subset with --limit) and which rows it holds; checks --device first."""
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.engine.device import bf16_is_fast, check_device

    if hasattr(args, "device"):
        device = check_device(args.device)
        if args.bf16 is None:  # auto
            args.bf16 = bf16_is_fast(device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    folder = folder_for(args)
    return limited(load_dataset(args.dataset, args.root, args.split, download=args.download, folder=folder), args.limit)


def _load_teacher(args: argparse.Namespace) -> tuple[VisionLanguageTeacher, tuple[str, ...]]:
    from richkd.teachers.imagenet_names import resolve_templates
    from richkd.teachers.vlm import load_vlm

    templates = resolve_templates(args.templates)
    vlm = load_vlm(args.teacher, device=args.device, weights=args.weights)
    log.info("teacher: %s (%s)", vlm.label, vlm.model_id)
    return vlm, templates


def _encode_split(vlm: VisionLanguageTeacher, ds: ArrayDataset, args: argparse.Namespace) -> torch.Tensor:
    device = torch.device(args.device)
    amp = args.bf16 and device.type in ("cpu", "cuda")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(ds), args.batch_size):
            x = ds.images[start : start + args.batch_size].to(device).float() / 255.0
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                chunks.append(torch.nn.functional.normalize(vlm.encode_images(x).float(), dim=-1).cpu())
    return torch.cat(chunks)  # [N, E]


def _metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    from richkd.analysis.metrics import expected_calibration_error, nll, topk_accuracy

    acc = topk_accuracy(logits, labels, (1, 5))
    return {"top1": acc[1], "top5": acc[5], "nll": nll(logits, labels),
            "ece": expected_calibration_error(logits, labels, n_bins=15)}


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from richkd.teachers.prompts import SINGLE_TEMPLATE
    from richkd.teachers.zero_shot import class_embeddings, zero_shot_logits

    _check_out(args.out)
    ds, subset = _load_data(args)
    vlm, templates = _load_teacher(args)
    scales = args.logit_scale or [1.0, vlm.logit_scale]
    t0 = time.perf_counter()
    image_emb = _encode_split(vlm, ds, args)
    seconds = time.perf_counter() - t0
    prompt_sets = {f"ensemble ({len(templates)})": templates, f"single ({SINGLE_TEMPLATE[0]!r})": SINGLE_TEMPLATE}
    rows = []
    for prompts_name, prompts in prompt_sets.items():
        class_emb = class_embeddings(vlm, ds.classes, prompts, clean_names=args.clean_names).cpu()
        for scale in scales:
            logits = zero_shot_logits(image_emb, class_emb, scale)
            rows.append({"prompts": prompts_name, "logit_scale": scale, **_metrics(logits, ds.labels)})
    result = {"teacher": vlm.label, "model_id": vlm.model_id, "dataset": ds.name, "split": ds.split,
              "rows": len(ds), "subset": None if subset is None else subset.describe(), "clean_names": args.clean_names,
              "image_seconds": round(seconds, 2),
              "images_per_second": round(len(ds) / seconds, 1), "results": rows}
    shown = "" if subset is None else f", {subset.describe()}"
    print(f"{vlm.label} on {ds.name}/{ds.split} ({len(ds)} images{shown})")
    print(f"{'prompts':<30} {'scale':>8} {'top-1 %':>8} {'top-5 %':>8} {'NLL':>7} {'ECE %':>7}")
    for r in rows:
        print(f"{r['prompts']:<30} {r['logit_scale']:>8.3g} {r['top1']:>8.2f} {r['top5']:>8.2f} "
              f"{r['nll']:>7.3f} {100 * r['ece']:>7.2f}")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


def _check_out(out: str | None) -> None:
    if out:
        check_out_file(Path(out))


def cmd_cache(args: argparse.Namespace) -> int:
    from richkd.caches.build_target import build_target_cache
    from richkd.engine.io import check_writable

    if args.dataset == "imagenet":
        from richkd.cli.stream_cache import cmd_stream_cache

        return cmd_stream_cache(args)
    check_writable(Path(args.out), "--out")
    ds, rows = _load_data(args)
    vlm, templates = _load_teacher(args)
    t0 = time.perf_counter()
    exact = args.views == "all"
    out = build_target_cache(
        vlm, ds, Path(args.out), templates=templates, clean_names=args.clean_names,
        n_aug_views=0 if exact else args.views, include_flip=args.include_flip, batch_size=args.batch_size,
        seed=args.seed, bf16=args.bf16, device=args.device, subset=rows, checkpoint_seconds=args.checkpoint_every,
        exact_views=exact, pad=args.pad,
    )
    print(f"target cache {out}: {ds.name}/{ds.split}, {len(ds)} rows, teacher {vlm.label} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_fit_scale(args: argparse.Namespace) -> int:
    from richkd.caches.target import TargetCache
    from richkd.data import load_dataset
    from richkd.data.subset import stratified_rows
    from richkd.teachers.zero_shot import fit_logit_scale

    _check_out(args.out)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, args.root, args.split, download=args.download, folder=folder_for(args))
    cache = TargetCache.open(args.cache)
    cache.validate(dataset=ds.name, split=ds.split, n_rows=len(ds), class_names=ds.classes)
    limit = args.limit if args.limit is not None else cache.meta.subset_limit  # no --limit: every row it holds
    run_rows = stratified_rows(ds.labels, limit) if limit is not None else None
    cache_rows = cache.cache_rows(ds.labels, run_rows)  # refuses rows the cache lacks, or another rule's rows
    labels = ds.labels if run_rows is None else ds.labels[run_rows]
    view = None if args.all_views else cache.meta.plain_view
    cosines = cache.all_cosines(view)
    if cache_rows is not None:
        cosines = cosines[cache_rows]
    if args.all_views:  # [N, V, C] -> [N*V, C], each view labelled with its row's class
        labels = labels.repeat_interleave(cache.n_views)
        cosines = cosines.reshape(-1, cosines.shape[-1])
    scale = fit_logit_scale(cosines.float(), labels)
    before = _metrics(cosines.float(), labels)
    after = _metrics(scale * cosines.float(), labels)
    result = {"cache": str(args.cache), "teacher": cache.meta.model_label, "logit_scale": scale,
              "views": "all" if args.all_views else "plain",
              "view_index": view, "view_name": None if view is None else cache.meta.view_names[view],
              "nll_at_1": before["nll"], "nll_at_fit": after["nll"],
              "ece_at_fit": after["ece"]}
    print(f"fitted logit scale {scale:.3f} (NLL {before['nll']:.3f} at scale 1 -> {after['nll']:.3f}; "
          f"ECE {100 * after['ece']:.2f} %) for {cache.meta.model_label}")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0

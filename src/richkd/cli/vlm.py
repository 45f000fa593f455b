"""`richkd vlm zeroshot | cache | fit-scale`: the vision-language teacher from the command line.

Thin: parse, call the library, print. RichKDError propagates to `richkd.cli.app.main`, which prints one line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

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


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from richkd.api import zero_shot

    _check_out(args.out)
    _set_threads(args.threads)
    result = zero_shot(dataset=args.dataset, teacher=args.teacher, root=args.root, split=args.split,
                       limit=args.limit, weights=args.weights, templates=args.templates, clean_names=args.clean_names,
                       scales=args.logit_scale, batch_size=args.batch_size, device=args.device, bf16=args.bf16,
                       download=args.download, folder=folder_for(args))
    shown = "" if result["subset"] is None else f", {result['subset']}"
    print(f"{result['teacher']} on {result['dataset']}/{result['split']} ({result['rows']} images{shown})")
    print(f"{'prompts':<30} {'scale':>8} {'top-1 %':>8} {'top-5 %':>8} {'NLL':>7} {'ECE %':>7}")
    for r in result["results"]:
        print(f"{r['prompts']:<30} {r['logit_scale']:>8.3g} {r['top1']:>8.2f} {r['top5']:>8.2f} "
              f"{r['nll']:>7.3f} {100 * r['ece']:>7.2f}")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


def _check_out(out: str | None) -> None:
    if out:
        check_out_file(Path(out))


def cmd_cache(args: argparse.Namespace) -> int:
    from richkd.api import build_vlm_cache

    if args.dataset == "imagenet":
        from richkd.cli.stream_cache import cmd_stream_cache

        return cmd_stream_cache(args)
    _set_threads(args.threads)
    result = build_vlm_cache(
        args.out, dataset=args.dataset, root=args.root, split=args.split, limit=args.limit, teacher=args.teacher,
        weights=args.weights, templates=args.templates, clean_names=args.clean_names, views=args.views, pad=args.pad,
        include_flip=args.include_flip, seed=args.seed, batch_size=args.batch_size, device=args.device,
        bf16=args.bf16, download=args.download, checkpoint_seconds=args.checkpoint_every, folder=folder_for(args),
    )
    print(f"target cache {result.path}: {result.dataset}/{result.split}, {result.rows} rows, teacher "
          f"{result.teacher} ({result.seconds:.1f} s)")
    return 0


def cmd_fit_scale(args: argparse.Namespace) -> int:
    from richkd.api import fit_logit_scale

    _check_out(args.out)
    _set_threads(args.threads)
    result = fit_logit_scale(args.cache, dataset=args.dataset, root=args.root, split=args.split, limit=args.limit,
                             all_views=args.all_views, download=args.download, folder=folder_for(args))
    print(f"fitted logit scale {result['logit_scale']:.3f} (NLL {result['nll_at_1']:.3f} at scale 1 -> "
          f"{result['nll_at_fit']:.3f}; ECE {100 * result['ece_at_fit']:.2f} %) for {result['teacher']}")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0

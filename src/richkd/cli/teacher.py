"""`richkd teacher cache`: a frozen CNN teacher's outputs for every (row, view) of a split, computed once.

Thin: parse, call the library, print. RichKDError propagates to `richkd.cli.app.main`, which prints one line.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from richkd.cli.args import add_allow_code, add_folder_args, count_int, folder_for, nonneg_float, pad_int, threads_int


def add_teacher_parser(subparsers: Any) -> None:
    """Register `richkd teacher ...` on the main CLI's subparsers."""
    teacher = subparsers.add_parser("teacher", help="frozen CNN teacher: the view-complete teacher cache")
    sub = teacher.add_subparsers(dest="teacher_command", required=True)
    cache = sub.add_parser(
        "cache", help="logits and pooled features of every row x crop/flip view (serve with model.teacher_cache)"
    )
    cache.add_argument("--checkpoint", required=True, help="teacher model file (model_last.pt)")
    cache.add_argument("--arch", required=True, help="teacher architecture (zoo name, as model.teacher)")
    cache.add_argument("--dataset", required=True, help="cifar10 | cifar100 | imagefolder | fashion_mnist")
    cache.add_argument("--root", default=None, help="dataset root (folder or archive)")
    cache.add_argument("--cache-dir", default=None, help="where decoded image-folder arrays are kept (data.cache_dir)")
    cache.add_argument("--download", action="store_true", help="fetch CIFAR when absent (needs network)")
    cache.add_argument("--split", default="train")
    cache.add_argument("--limit", type=count_int, default=None,
                       help="a stratified subset of exactly N rows (about N/C per class, as data.train_limit=N)")
    cache.add_argument("--pad", type=pad_int, default=4, help="random-crop padding of the runs it serves (data.pad)")
    cache.add_argument("--out", required=True, help="cache directory")
    cache.add_argument("--batch-size", type=count_int, default=1024, help="images (views) per teacher forward")
    cache.add_argument("--bf16", action="store_true",
                       help="bf16 teacher forward (faster with AMX; targets then differ from an fp32 online teacher)")
    cache.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="run the teacher in NHWC (faster for convolutions on CPU and GPU)")
    cache.add_argument("--device", default="cpu")
    cache.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")
    cache.add_argument("--checkpoint-every", type=nonneg_float, default=30.0, metavar="SECONDS",
                       help="save progress this often (0: after every chunk); a killed build resumes from there")
    add_folder_args(cache)
    add_allow_code(cache)
    cache.set_defaults(func=cmd_cache, interrupt_hint="run the same command again to continue the build")


def cmd_cache(args: argparse.Namespace) -> int:
    from richkd.api import build_teacher_cache

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = build_teacher_cache(
        args.out, checkpoint=args.checkpoint, arch=args.arch, dataset=args.dataset, root=args.root, split=args.split,
        limit=args.limit, pad=args.pad, cache_dir=args.cache_dir, batch_size=args.batch_size, device=args.device,
        bf16=args.bf16, channels_last=args.channels_last, download=args.download,
        checkpoint_seconds=args.checkpoint_every, folder=folder_for(args, args.checkpoint), allow_code=args.allow_code,
    )
    meta, seconds = result.meta, result.seconds
    print(f"teacher cache {result.path}: {result.rows} rows x {meta.n_views} views x ({meta.n_classes} logits + "
          f"{meta.feature_dim} features) in float16 = {meta.nbytes / 2**30:.2f} GiB")
    print(f"teacher cache {result.path}: {result.arch} on {result.dataset}/{result.split}, {result.rows} rows "
          f"({seconds:.1f} s, {result.rows * meta.n_views / max(seconds, 1e-9):.0f} views/s)")
    return 0

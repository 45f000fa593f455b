"""`richkd vlm cache --dataset imagenet` and `richkd vlm cache-merge`: streamed, sharded target caches.

Thin: parse, call `richkd.api.build_imagenet_cache` / `merge_cache_parts`, print. RichKDError propagates to
`richkd.cli.app.main`.
"""

from __future__ import annotations

import argparse
import time

import torch

from richkd.cli.args import workers_int
from richkd.errors import RichKDError


def cmd_stream_cache(args: argparse.Namespace) -> int:
    from richkd.api import build_imagenet_cache

    if args.root is None:
        raise RichKDError("--dataset imagenet needs --root: the split folder (<wnid>/<image>) or a folder of *.tar")
    if args.views != 0 or args.limit is not None:
        raise RichKDError("--dataset imagenet caches plain (and flip) views of every row: drop --views and --limit")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = build_imagenet_cache(
        args.out, root=args.root, split=args.split, classes=args.classes, class_names=args.class_names,
        teacher=args.teacher, weights=args.weights, templates=args.templates, clean_names=args.clean_names,
        include_flip=args.include_flip, shard=args.shard, workers=args.workers, batch_size=args.batch_size,
        device=args.device, bf16=args.bf16, checkpoint_seconds=args.checkpoint_every, merge=not args.no_merge,
        announce=print,
    )
    lo, hi, seconds = result.lo, result.hi, result.seconds
    print(f"{result.path}: rows {lo}..{hi - 1} of imagenet/{result.split} with {result.teacher}, {seconds:.1f} s "
          f"({(hi - lo) / max(seconds, 1e-9):.1f} images/s, this run including any resumed or skipped rows)")
    return 0


def cmd_cache_merge(args: argparse.Namespace) -> int:
    from richkd.api import merge_cache_parts

    t0 = time.perf_counter()
    out = merge_cache_parts(args.parts, args.out, delete_parts=args.delete_parts)
    print(f"merged {len(args.parts)} parts into {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def add_stream_cache_args(cache: argparse.ArgumentParser) -> None:
    """The ImageNet options of `richkd vlm cache` (used with --dataset imagenet)."""
    g = cache.add_argument_group("ImageNet-scale (--dataset imagenet: --root is a <wnid>/ folder or *.tar shards)")
    g.add_argument("--shard", default=None, metavar="I/N",
                   help="build only part I of N (contiguous row ranges) into OUT/parts/; the last part merges")
    g.add_argument("--workers", type=workers_int, default=0, help="decode worker processes (they overlap the model)")
    g.add_argument("--classes", default=None,
                   help="class list in head order: a file (one wnid a line) or wnid,wnid,... (default: all 1000)")
    g.add_argument("--class-names", default="torchvision", choices=("torchvision", "clip"),
                   help="wording of the class names in the prompts (clip: the names CLIP's authors curated)")
    g.add_argument("--no-merge", action="store_true", help="with --shard: do not merge when every part is done")


def add_cache_merge_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    merge = sub.add_parser("cache-merge", help="merge the parts of a sharded ImageNet target cache into one")
    merge.add_argument("parts", nargs="+", help="part folders (OUT/parts/part-*)")
    merge.add_argument("--out", required=True, help="the merged cache directory")
    merge.add_argument("--delete-parts", action="store_true", help="remove the parts after a successful merge")
    merge.set_defaults(func=cmd_cache_merge, interrupt_hint="rerun the same command to redo the merge")

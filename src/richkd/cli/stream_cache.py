"""`richkd vlm cache --dataset imagenet` and `richkd vlm cache-merge`: streamed, sharded target caches.

Thin: parse, call `richkd.caches.stream`, print. RichKDError propagates to `richkd.cli.app.main`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from richkd.cli.args import workers_int

log = logging.getLogger(__name__)

IMAGENET_TRAIN_ROWS = 1_281_167  # ILSVRC-2012 train images, for the size statement


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def cmd_stream_cache(args: argparse.Namespace) -> int:
    from richkd.caches.stream import (
        build_stream_cache,
        make_recipe,
        open_source,
        parse_part,
        part_range,
    )
    from richkd.caches.stream_layout import cache_bytes
    from richkd.engine.device import bf16_is_fast, check_device
    from richkd.engine.io import check_writable
    from richkd.errors import RichKDError
    from richkd.teachers.imagenet_names import read_class_list, resolve_templates, wnid_to_name
    from richkd.teachers.vlm import load_vlm
    from richkd.teachers.zero_shot import class_embeddings

    if args.root is None:
        raise RichKDError("--dataset imagenet needs --root: the split folder (<wnid>/<image>) or a folder of *.tar")
    if args.views != 0 or args.limit is not None:
        raise RichKDError("--dataset imagenet caches plain (and flip) views of every row: drop --views and --limit")
    check_writable(Path(args.out), "--out")
    device = check_device(args.device)
    bf16 = bf16_is_fast(device) if args.bf16 is None else args.bf16
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    part = parse_part(args.shard) if args.shard else None
    classes = read_class_list(args.classes)
    names = wnid_to_name(args.class_names)
    prompt_names = tuple(names[w] for w in classes)
    templates = resolve_templates(args.templates)
    source = open_source(args.root, classes)
    vlm = load_vlm(args.teacher, device=device, weights=args.weights)
    class_emb = class_embeddings(vlm, prompt_names, templates, clean_names=args.clean_names)  # [C, E]
    recipe = make_recipe(vlm, source, dataset="imagenet", split=args.split, classes=classes,
                         prompt_names=prompt_names, templates=templates, clean_names=args.clean_names,
                         include_flip=args.include_flip, embed_dim=int(class_emb.shape[1]))
    m = recipe.meta
    total = cache_bytes(m.n_rows, m.n_views, m.n_classes, m.embed_dim)
    full = cache_bytes(IMAGENET_TRAIN_ROWS, m.n_views, m.n_classes, m.embed_dim)
    lo, hi = part_range(m.n_rows, *part) if part else (0, m.n_rows)
    mine = cache_bytes(hi - lo, m.n_views, m.n_classes, m.embed_dim)
    print(f"target cache: {m.n_rows} rows x {m.n_views} views, {m.n_classes} classes, {m.embed_dim}-d: "
          f"{_gib(total)} (this part, rows {lo}..{hi - 1}: {_gib(mine)}; "
          f"ImageNet's {IMAGENET_TRAIN_ROWS:,} train rows at this recipe: {_gib(full)})")
    t0 = time.perf_counter()
    out = build_stream_cache(
        vlm, source, Path(args.out), recipe, class_emb=class_emb, part=part, batch_size=args.batch_size,
        workers=args.workers, bf16=bf16, device=device, checkpoint_seconds=args.checkpoint_every,
        auto_merge=not args.no_merge,
    )
    seconds = time.perf_counter() - t0
    print(f"{out}: rows {lo}..{hi - 1} of imagenet/{args.split} with {vlm.label}, {seconds:.1f} s "
          f"({(hi - lo) / max(seconds, 1e-9):.1f} images/s, this run including any resumed or skipped rows)")
    return 0


def cmd_cache_merge(args: argparse.Namespace) -> int:
    from richkd.caches.stream_merge import merge_parts

    t0 = time.perf_counter()
    out = merge_parts([Path(p) for p in args.parts], Path(args.out), delete_parts=args.delete_parts)
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

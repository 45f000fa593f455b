"""`richkd shift`: top-1/top-5 of ImageNet checkpoints (and a vision-language teacher's zero-shot predictor) on the
distribution-shift sets ImageNet-V2, -Sketch, -R and -A -> DIR/shift.json and DIR/shift.md.

A command of its own, not an option of `richkd robustness`: that one evaluates in-memory splits of a `--dataset`
(CIFAR-C, small shift folders of the same class list); these sets are streamed 224-px evaluations with their own
label layouts (index folders, 200-class subsets of a 1000-class head). Thin: parse, call `richkd.api.measure_shift`,
print. RichKDError propagates to `richkd.cli.app.main` (one line).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from richkd.cli.args import add_allow_code, count_int, image_size_int, threads_int, workers_int
from richkd.cli.vlm import TEACHER_HELP
from richkd.engine.io import parse_named


def add_shift_parser(subparsers: Any) -> None:
    """Register `richkd shift` on the main CLI's subparsers."""
    p = subparsers.add_parser("shift", help="accuracy on ImageNet-V2, -Sketch, -R and -A (200-class subsets mapped)")
    p.add_argument("--set", action="append", required=True, metavar="NAME=FOLDER",
                   help="a shift set's root (class folders: 0..999, or wnids); repeatable")
    p.add_argument("--layout", action="append", default=[], metavar="NAME=LAYOUT",
                   help="force a set's layout: imagenet-v2 | imagenet-sketch | imagenet-r | imagenet-a | subset "
                   "(default: recognised from the folder names)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="model file; repeatable")
    p.add_argument("--arch", action="append", default=[], metavar="NAME=ARCH",
                   help="architecture of a checkpoint that does not record it (torchvision/mdistiller files)")
    p.add_argument("--classes", default=None,
                   help="the head's wnids in order: a file or wnid,wnid,... (default: the checkpoint's recorded "
                   "class list if it holds wnids, else the packaged ImageNet-1k order)")
    p.add_argument("--teacher", default=None, help=f"also score this teacher zero-shot: {TEACHER_HELP}")
    p.add_argument("--weights", default=None, help="open_clip: local checkpoint file or pretrained tag")
    p.add_argument("--templates", default="imagenet80", help="richkd12 | imagenet80 | a template file")
    p.add_argument("--class-names", default="clip", choices=("torchvision", "clip"),
                   help="wording of the class names in the teacher's prompts")
    p.add_argument("--image-size", type=image_size_int, default=224, help="checkpoints' centre crop")
    p.add_argument("--resize-size", type=image_size_int, default=256,
                   help="checkpoints' short-side resize before the crop")
    p.add_argument("--batch-size", type=count_int, default=128)
    p.add_argument("--workers", type=workers_int, default=0, help="decode worker processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output folder for shift.json and shift.md")
    add_allow_code(p)
    p.set_defaults(func=cmd_shift, interrupt_hint="nothing was written")



def cmd_shift(args: argparse.Namespace) -> int:
    from richkd.api import measure_shift
    from richkd.robustness.shift_run import render_markdown

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure_shift(
        parse_named(args.set, "--set", "FOLDER"), args.out,
        checkpoints=parse_named(args.checkpoint, "--checkpoint", "PATH"),
        archs=parse_named(args.arch, "--arch", "ARCH"),
        layouts=parse_named(args.layout, "--layout", "LAYOUT"), classes=args.classes, teacher=args.teacher,
        weights=args.weights, templates=args.templates, class_names=args.class_names, image_size=args.image_size,
        resize_size=args.resize_size, batch_size=args.batch_size, workers=args.workers, device=args.device,
        allow_code=args.allow_code,
    )
    print(render_markdown(result), end="")
    return 0

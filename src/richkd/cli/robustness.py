"""`richkd robustness`: accuracy of one or more checkpoints under the 19 CIFAR-C corruptions (generated or the
official files) and on distribution-shift image folders -> DIR/robustness.json and DIR/robustness.md.

Thin: parse, call `richkd.api.robustness`, print. RichKDError propagates to `richkd.cli.app.main` (one line).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from richkd.cli.args import add_allow_code, add_folder_args, count_int, folder_for, seed_int, threads_int
from richkd.engine.io import parse_named


def add_robustness_parser(subparsers: Any) -> None:
    """Register `richkd robustness` on the main CLI's subparsers."""
    p = subparsers.add_parser("robustness", help="accuracy under CIFAR-C corruptions and distribution shift")
    p.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                   help="model file to evaluate; repeat for several (each corrupted batch is shared)")
    p.add_argument("--arch", action="append", default=[], metavar="NAME=ARCH",
                   help="architecture of a checkpoint that does not record it (mdistiller/CRD files)")
    p.add_argument("--dataset", required=True, help="cifar10 | cifar100 | imagefolder | fashion_mnist")
    p.add_argument("--root", default=None, help="dataset root (folder or archive)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=count_int, default=None, help="stratified subset of N images (same rows every run)")
    p.add_argument("--corruptions", default=None, help="comma-separated names (default: all 19)")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities in 1..5")
    p.add_argument("--official-c", default=None, metavar="DIR",
                   help="read the official CIFAR-10-C/100-C .npy files from DIR instead of generating")
    p.add_argument("--shift", action="append", default=[], metavar="NAME=FOLDER",
                   help="distribution-shift image folder (<split>/<class>/<image>); repeatable")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the generated corruptions")
    p.add_argument("--batch-size", type=count_int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output folder for robustness.json and robustness.md")
    add_folder_args(p)
    add_allow_code(p)
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from richkd.api import measure_robustness
    from richkd.engine.io import check_writable
    from richkd.robustness.run import parse_int_list, render_markdown

    check_writable(Path(args.out), "--out")
    checkpoints = parse_named(args.checkpoint, "--checkpoint")
    archs, shifts = parse_named(args.arch, "--arch", "ARCH"), parse_named(args.shift, "--shift", "FOLDER")
    corruptions = [c.strip() for c in args.corruptions.split(",") if c.strip()] if args.corruptions else None
    severities = parse_int_list(args.severities, "--severities")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure_robustness(
        checkpoints, args.out, dataset=args.dataset, root=args.root, split=args.split, limit=args.limit, archs=archs,
        corruptions=corruptions, severities=severities, official_c=args.official_c, shifts=shifts, seed=args.seed,
        batch_size=args.batch_size, device=args.device, progress=True, allow_code=args.allow_code,
        folder=folder_for(args, Path(next(iter(checkpoints.values()))).expanduser() if checkpoints else None),
    )
    print(render_markdown(result), end="")
    return 0

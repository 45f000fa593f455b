"""`richkd demo`: the main job in one offline command (teacher -> surrogate VLM targets -> students -> analyses
-> robustness -> cost -> HTML report); the last line printed is the report's path.

Thin: parse, check the data and the output folder, print the plan, call `richkd.demo.run_demo`. RichKDError
propagates to `richkd.cli.app.main`, which prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from richkd.cli.args import positive_float, seed_int, threads_int

DEFAULT_OUT = "runs/demo"


def add_demo_parser(subparsers: Any) -> None:
    """Register `richkd demo` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline offline on Fashion-MNIST (or CIFAR-10) and write an HTML report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for everything the demo writes (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="a few hundred images, one epoch: about 2 minutes (CI)")
    p.add_argument("--scale", type=positive_float, default=1.0,
                   help="multiply images and epochs by F (more compute, better models; time grows ~F^2)")
    p.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "cifar10"),
                   help="fashion_mnist (Debian's dataset-fashion-mnist) or cifar10 (needs --root)")
    p.add_argument("--root", default=None,
                   help="dataset location: Fashion-MNIST idx files, or a CIFAR-10 folder/.tar.gz/python pickles")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of every run, subset and corruption")
    p.set_defaults(func=cmd_demo, interrupt_hint="run the same command again to continue where it stopped")


def cmd_demo(args: argparse.Namespace) -> int:
    from richkd.demo import describe_plan, estimate_seconds, make_plan, resolve_data, run_demo
    from richkd.demo.pipeline import check_surrogate_installed
    from richkd.demo.steps import check_settings, quiet_console_logging
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable

    data = resolve_data(args.dataset, args.root)
    check_device(args.device)
    out = Path(args.out).expanduser().resolve()
    check_writable(out, "--out")
    if args.threads is not None and args.threads >= 1:
        torch.set_num_threads(args.threads)
    plan = make_plan(data=data, quick=args.quick, scale=args.scale, seed=args.seed, device=args.device,
                     threads=args.threads)
    check_surrogate_installed()
    check_settings(out, plan.settings())  # before the estimate: a mismatched --out fails in a second
    quiet_console_logging()
    fresh = not (out / "steps" / "report.json").is_file()
    print(describe_plan(plan, estimate_seconds(plan) if fresh else None), flush=True)
    html = run_demo(plan, out, console=sys.stdout)
    print(f"report: {out / 'report' / 'report.md'} (Markdown) and, to open in a browser:")
    print(html)
    return 0

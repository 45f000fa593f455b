"""`richkd report` (Markdown table, or an HTML + Markdown report) and `richkd cost` (params, FLOPs, speed).

Thin: parse, call the library, print. RichKDError propagates to `richkd.cli.app.main`, which prints one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from richkd.api.report import DEFAULT_TITLE
from richkd.cli.args import add_allow_code, count_int, image_size_int, nonneg_count_int, threads_int
from richkd.engine.io import parse_named
from richkd.errors import RichKDError


def add_report_parser(subparsers: Any) -> None:
    """Register `richkd report` and `richkd cost` on the main CLI's subparsers."""
    report = subparsers.add_parser(
        "report", help="Markdown table of finished runs; with --out an HTML + Markdown report with figures"
    )
    report.add_argument("runs", nargs="+", help="run directories; NAME_s<seed> directories are grouped")
    report.add_argument("--analysis", default=None, help="analysis.json written by `richkd analyze`")
    report.add_argument("--robustness", default=None, help="robustness.json written by `richkd robustness`")
    report.add_argument("--cost", default=None, help="cost.json written by `richkd cost`")
    report.add_argument("--title", default=None, help=f"page title (default: {DEFAULT_TITLE!r})")
    report.add_argument("--out", default=None, help="write DIR/report.html and DIR/report.md here")
    report.set_defaults(func=cmd_report)

    cost = subparsers.add_parser("cost", help="parameters, FLOPs, latency and throughput of model files")
    cost.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                      help="a model file (model_best.pt / model_last.pt), repeatable")
    cost.add_argument("--device", default="cpu")
    cost.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads (recorded in cost.json)")
    cost.add_argument("--image-size", type=image_size_int, default=None,
                      help="input height = width (default: the size the model files record, else 32)")
    cost.add_argument("--repeats", type=count_int, default=20, help="timed forward passes per batch size (median)")
    cost.add_argument("--warmup", type=nonneg_count_int, default=3, help="untimed forward passes before timing")
    cost.add_argument("--out", required=True, help="write DIR/cost.json here")
    add_allow_code(cost)
    cost.set_defaults(func=cmd_cost)


def cmd_report(args: argparse.Namespace) -> int:
    from richkd.api import summary_table, write_report

    if args.out is None:
        given = [flag for flag in ("analysis", "robustness", "cost", "title") if getattr(args, flag) is not None]
        if given:
            raise RichKDError(f"--{given[0]} only applies to the HTML report: add --out DIR")
        print(summary_table(args.runs), end="")
        return 0
    files = write_report(args.runs, args.out, analysis=args.analysis, robustness=args.robustness, cost=args.cost,
                         title=args.title or DEFAULT_TITLE)
    print(files.markdown)
    print(files.html)
    return 0


def parse_checkpoints(specs: list[str]) -> dict[str, Path]:
    """NAME=PATH pairs, names unique and non-empty, files present."""
    found = {name: Path(path) for name, path in parse_named(specs, "--checkpoint").items()}
    for name, path in found.items():
        if not path.is_file():
            raise RichKDError(f"--checkpoint {name}: {path} not found")
    return found


def cmd_cost(args: argparse.Namespace) -> int:
    import torch

    from richkd.api import measure_cost

    checkpoints = parse_checkpoints(args.checkpoint)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure_cost(checkpoints, args.out, device=args.device, image_size=args.image_size, repeats=args.repeats,
                          warmup=args.warmup, allow_code=args.allow_code)
    for name, cost in result["models"].items():
        print(f"{name:<16} {cost['arch']:<14} params {cost['params'] / 1e6:7.3f}M  FLOPs {cost['flops'] / 1e6:9.1f}M"
              f"  b1 {cost['latency_ms_b1']:7.2f} ms  b256 {cost['throughput_b256_img_s']:9.0f} img/s")
    print(Path(args.out) / "cost.json")
    return 0

"""`richkd report` (Markdown table, or an HTML + Markdown report) and `richkd cost` (params, FLOPs, speed).

Thin: parse, call the library, print. RichKDError propagates to `richkd.cli.app.main`, which prints one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from richkd.cli.args import count_int, image_size_int, nonneg_count_int, threads_int
from richkd.engine.io import file_sha256, parse_named
from richkd.errors import RichKDError

DEFAULT_TITLE = "RichKD report"


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
    cost.set_defaults(func=cmd_cost)


def cmd_report(args: argparse.Namespace) -> int:
    from richkd.report import load_summaries, render_table

    runs = [Path(p) for p in args.runs]
    if args.out is None:
        given = [flag for flag in ("analysis", "robustness", "cost", "title") if getattr(args, flag) is not None]
        if given:
            raise RichKDError(f"--{given[0]} only applies to the HTML report: add --out DIR")
        print(render_table(load_summaries(runs)), end="")
        return 0

    from richkd.engine.io import check_writable, write_text_atomic
    from richkd.report.build import build_report

    out = Path(args.out)
    check_writable(out, "--out")
    html, markdown = build_report(
        runs,
        analysis=Path(args.analysis) if args.analysis else None,
        robustness=Path(args.robustness) if args.robustness else None,
        cost=Path(args.cost) if args.cost else None,
        title=args.title or DEFAULT_TITLE,
    )
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.html", html)
    print(out / "report.md")
    print(out / "report.html")
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

    from richkd.analysis.cost import cpu_name, measure_cost
    from richkd.engine.checkpoint import load_weights_strict, read_model_file
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable, write_json_atomic
    from richkd.models import create_model

    checkpoints = parse_checkpoints(args.checkpoint)
    if (args.image_size is not None and args.image_size < 1) or args.repeats < 1 or args.warmup < 0:
        raise RichKDError("--image-size and --repeats must be ≥ 1 and --warmup ≥ 0")
    device = check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_writable(out, "--out")
    models = {}
    for name, path in checkpoints.items():  # load every file before timing any, so a bad one fails at once
        state, info = read_model_file(path)
        if not info:
            raise RichKDError(f"--checkpoint {name}: {path} does not record its architecture (not a richkd "
                              "model file); use model_best.pt / model_last.pt of a richkd run")
        model = create_model(info["arch"], int(info["num_classes"]))
        load_weights_strict(model, state, source=path, arch=info["arch"])
        models[name] = (model.to(device), info, path)
    recorded = {tuple(info["input_size"]) for _, info, _ in models.values() if info.get("input_size") is not None}
    if args.image_size is None and len(recorded) > 1:
        raise RichKDError(f"the model files record different input sizes ({sorted(recorded)}): pass --image-size")
    size = args.image_size or (int(min(next(iter(recorded)))) if recorded else 32)
    input_shape = (3, size, size)
    result: dict[str, Any] = {
        "version": 1,
        "device": str(device),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "input": list(input_shape),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "models": {},
    }
    for name, (model, info, path) in models.items():
        cost = measure_cost(model, input_shape=input_shape, device=device, repeats=args.repeats,
                            warmup=args.warmup)
        result["models"][name] = {"arch": info["arch"], "checkpoint": str(path), "checkpoint_sha256": file_sha256(path),
                                  **cost}
        print(f"{name:<16} {info['arch']:<14} params {cost['params'] / 1e6:7.3f}M  FLOPs {cost['flops'] / 1e6:9.1f}M"
              f"  b1 {cost['latency_ms_b1']:7.2f} ms  b256 {cost['throughput_b256_img_s']:9.0f} img/s")
    write_json_atomic(out / "cost.json", result)
    print(out / "cost.json")
    return 0

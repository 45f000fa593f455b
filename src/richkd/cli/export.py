"""`richkd export` (safetensors + model card, ONNX, latency) and `richkd classify` (images -> top-k classes).

Thin: parse, call richkd.api, print. RichKDError propagates to `richkd.cli.app.main`, which prints one line
and exits 2; an image that cannot be decoded is a one-line warning and exit code 1 once the rest are done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from richkd.cli.args import add_allow_code, check_out_file, count_int, nonneg_count_int, threads_int


def add_export_parsers(subparsers: Any) -> None:
    """Register `richkd export` and `richkd classify` on the main CLI's subparsers."""
    ex = subparsers.add_parser(
        "export", help="a trained student -> model.safetensors + model_card.json (+ ONNX, checked; + latency)"
    )
    ex.add_argument("model", help="model_last.pt / model_best.pt of a run (or an exported model.safetensors)")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--onnx", action="store_true", help="also write model.onnx (dynamic batch) and check it")
    ex.add_argument("--check", nargs="+", default=None, metavar="IMAGES",
                    help="real images (files, folders, globs) for the ONNX Runtime vs PyTorch check")
    ex.add_argument("--bench", action="store_true",
                    help="batch-1 latency and batch-256 throughput, ONNX Runtime and PyTorch, student and "
                    "teacher (implies --onnx); writes bench.json")
    ex.add_argument("--bench-repeats", type=count_int, default=50, help="timed runs per batch size (median)")
    ex.add_argument("--bench-warmup", type=nonneg_count_int, default=5, help="untimed runs before timing")
    ex.add_argument("--threads", type=threads_int, default=None, help="CPU threads (PyTorch and ONNX Runtime)")
    add_allow_code(ex)
    ex.set_defaults(func=cmd_export, interrupt_hint="files already written are complete; the card is last")

    cl = subparsers.add_parser("classify", help="top-k classes of image files, folders or globs")
    cl.add_argument("model", help="model_last.pt / model_best.pt, model.safetensors (+ card) or model.onnx")
    cl.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or quoted globs")
    cl.add_argument("--top-k", type=count_int, default=5, help="classes per image (default 5)")
    cl.add_argument("--format", choices=("table", "jsonl"), default="table")
    cl.add_argument("--batch-size", type=count_int, default=256)
    cl.add_argument("--out", default=None, help="write the predictions here instead of to stdout")
    cl.add_argument("--device", default="cpu", help="PyTorch device (ONNX models run on the CPU)")
    cl.add_argument("--threads", type=threads_int, default=None)
    add_allow_code(cl)
    cl.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: on for more than one batch when stderr is a terminal)")
    cl.set_defaults(func=cmd_classify, interrupt_hint="nothing was written")


class _Warnings:
    """Undecodable images: one line each on stderr, counted for the exit code."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, path: Path, reason: str) -> None:
        self.count += 1
        print(f"richkd: warning: skipped {path}: {reason}", file=sys.stderr, flush=True)


def cmd_classify(args: argparse.Namespace) -> int:
    from richkd.api import classify, load_model
    from richkd.engine.io import write_text_atomic
    from richkd.export.classify import format_jsonl, format_table
    from richkd.export.images import collect_images

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out)
    paths = collect_images(args.inputs)  # no image found: one line before the model is loaded
    warn = _Warnings()
    progress = args.progress if args.progress is not None else sys.stderr.isatty() and len(paths) > args.batch_size
    model = load_model(args.model, device=args.device, threads=args.threads, allow_code=args.allow_code)
    predictions = classify(model, paths, top_k=args.top_k, batch_size=args.batch_size, progress=progress,
                           on_error=warn)
    text = (format_jsonl if args.format == "jsonl" else format_table)(predictions, model.classes)
    if out is not None:
        write_text_atomic(out, text)
        print(f"{len(predictions)} images classified -> {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if warn.count:
        print(f"richkd: {warn.count} of {len(paths)} images could not be read; the others were classified",
              file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from richkd.api import bench_export, export_model
    from richkd.export.bench import format_bench

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    warn = _Warnings()
    card = export_model(args.model, out, onnx=args.onnx or args.bench, check_images=args.check, on_error=warn,
                        allow_code=args.allow_code)
    print(f"exported {card['arch']} ({len(card['classes'])} classes) from {args.model}")
    written = [card["weights"]["file"], "model_card.json"] + ([card["onnx"]["file"]] if card["onnx"] else [])
    for name in written:
        print(f"  {out / name}")
    if card["onnx"] is not None:
        c = card["onnx"]["check"]
        print(
            f"ONNX Runtime vs PyTorch on {c['inputs']}: max |logit diff| {c['max_abs_logit_diff']:.2e} "
            f"(logits up to {c['max_abs_logit']:.2f}), top-1 agreement {100 * c['top1_agreement']:.2f}%"
        )
    if args.bench:
        result = bench_export(args.model, out, repeats=args.bench_repeats, warmup=args.bench_warmup,
                              allow_code=args.allow_code)
        print(format_bench(result), end="")
        print(f"  {out / 'bench.json'}")
    return 1 if warn.count else 0

"""`richkd export` (safetensors + model card, ONNX, latency) and `richkd classify` (images -> top-k classes).

Thin: parse, call richkd.export, print. RichKDError propagates to `richkd.cli.app.main`, which prints one line
and exits 2; an image that cannot be decoded is a one-line warning and exit code 1 once the rest are done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from richkd.cli.args import check_out_file, count_int, nonneg_count_int, threads_int
from richkd.errors import RichKDError


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
    ex.add_argument("--allow-code", action="store_true",
                    help="let a model named module:PKG.MOD:FACTORY be rebuilt by importing and running that code")
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
    cl.add_argument("--allow-code", action="store_true",
                    help="let a model named module:PKG.MOD:FACTORY be rebuilt by importing and running that code")
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
    from richkd.engine.device import check_device
    from richkd.engine.io import write_text_atomic
    from richkd.export.classify import classify_images, format_jsonl, format_table
    from richkd.export.images import collect_images
    from richkd.export.load import load_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = check_device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out)
    paths = collect_images(args.inputs)
    model = load_model(Path(args.model), threads=args.threads, device=device, allow_code=args.allow_code)
    warn = _Warnings()
    progress = args.progress if args.progress is not None else sys.stderr.isatty() and len(paths) > args.batch_size
    predictions = classify_images(
        model, paths, top_k=args.top_k, batch_size=args.batch_size, progress=progress, on_error=warn
    )
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
    from richkd.engine.io import check_writable
    from richkd.export.exporter import export_model
    from richkd.export.images import collect_images
    from richkd.export.load import load_model
    from richkd.export.onnx_export import require

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_writable(out, "--out")
    onnx = args.onnx or args.bench
    if args.check and not onnx:
        raise RichKDError("--check compares ONNX Runtime with PyTorch: add --onnx")
    if onnx:  # fail before any work when the extra is missing
        require("onnx")
        require("onnxruntime")
    check_images = collect_images(args.check) if args.check else None
    loaded = load_model(Path(args.model), allow_code=args.allow_code)
    warn = _Warnings()
    card = export_model(loaded, out, onnx=onnx, check_images=check_images, on_error=warn)
    print(f"exported {card['arch']} ({len(card['classes'])} classes) from {loaded.path}")
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
        _bench(args, loaded, card, out)
    return 1 if warn.count else 0


def _bench(args: argparse.Namespace, loaded: Any, card: dict[str, Any], out: Path) -> None:
    from richkd.engine.io import write_json_atomic
    from richkd.export.bench import Benched, bench, format_bench

    models = [Benched("student", loaded.arch, loaded.module, out / card["onnx"]["file"])]
    teacher = _teacher(card, loaded.classes)
    if teacher is not None:
        models.append(teacher)
    result = bench(models, input_size=loaded.spec.size, repeats=args.bench_repeats, warmup=args.bench_warmup)
    if teacher is None:
        result["teacher"] = "none: the run has no model.teacher, or its checkpoint is not on this machine"
    write_json_atomic(out / "bench.json", result)
    print(format_bench(result), end="")
    print(f"  {out / 'bench.json'}")


def _teacher(card: dict[str, Any], classes: tuple[str, ...]) -> Any:
    """The run's CNN teacher (model.teacher + model.teacher_checkpoint), when its file is still there."""
    from richkd.engine.checkpoint import load_model_file
    from richkd.export.bench import Benched
    from richkd.models import create_model

    training = card.get("training") or {}
    arch, ckpt = training.get("teacher"), training.get("teacher_checkpoint")
    if not arch or not ckpt or not Path(ckpt).is_file():
        return None
    model = create_model(arch, len(classes))
    load_model_file(Path(ckpt), model, arch=arch, num_classes=len(classes), classes=classes)
    return Benched("teacher", arch, model.eval(), None)

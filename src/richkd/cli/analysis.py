"""`richkd predict` (one predictions file per predictor) and `richkd analyze` (analysis.json + analysis.md).

Thin: parse, call `richkd.api.predict` / `richkd.api.analyze`, print. RichKDError propagates to
`richkd.cli.app.main`, which prints one line and exits 2.

Predictors of `predict` (docs/analysis_formats.md):
  --checkpoint T                         a model file (student or CNN teacher)        kind checkpoint | teacher
  --vlm SPEC                             zero-shot s · cos(image, class text)         kind vlm
  --cache DIR                            a target cache's view-0 cosines · s          kind cache
  --checkpoint T --cache DIR|--vlm SPEC --alpha A   α·z_T + (1 − α)·s·z_C (fuse_logits)  kind fused
  --checkpoint T --alpha A --no-vlm      the control α·z_T                            kind scaled_teacher
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from richkd.cli.args import (
    add_allow_code,
    add_folder_args,
    count_int,
    folder_for,
    positive_float,
    threads_int,
    unit_float,
)

__all__ = ["add_analysis_parsers", "cmd_predict", "cmd_analyze"]

VLM_HELP = "surrogate | random[:SEED] | open_clip:ARCH | hf:PATH_OR_HUB_ID"


def add_analysis_parsers(subparsers: Any) -> None:
    """Register `richkd predict` and `richkd analyze` on the main CLI's subparsers."""
    p = subparsers.add_parser("predict", help="write one predictor's logits on a split as a predictions file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model file (trained student or CNN teacher)")
    p.add_argument("--arch", default=None, help="architecture, if the file does not record it (or to override)")
    p.add_argument("--kind", choices=("checkpoint", "teacher"), default=None,
                   help="label a plain model file as a teacher in the provenance (default: checkpoint)")
    p.add_argument("--vlm", default=None, help=f"vision-language model for zero-shot logits: {VLM_HELP}")
    p.add_argument("--vlm-weights", default=None, help="open_clip: local checkpoint file or pretrained tag")
    p.add_argument("--templates", default=None, help="prompt template file for --vlm (default: the 12 templates)")
    p.add_argument("--no-clean-names", dest="clean_names", action="store_false",
                   help="--vlm: feed raw class names (underscores kept), as the reference code does")
    p.add_argument("--cache", default=None, help="target cache directory of this split (its plain view is used)")
    p.add_argument("--alpha", type=unit_float, default=None, help="α of the fused teacher α·z_T + (1 − α)·s·z_C")
    p.add_argument("--no-vlm", action="store_true", help="with --checkpoint and --alpha: the control α·z_T")
    p.add_argument("--vlm-scale", type=positive_float, default=None,
                   help="s multiplying the cosines (default: the model's own for --vlm, 1 when fused as the "
                        "reference does; required for --cache alone)")
    p.add_argument("--dataset", required=True, help="cifar10 | cifar100 | imagefolder | fashion_mnist")
    p.add_argument("--root", default=None, help="dataset root (folder or archive)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=count_int, default=None,
                   help="a stratified subset of N rows; rows keep their ids in the full split")
    p.add_argument("--features", action="store_true",
                   help="also store pooled penultimate features (the image embedding for --vlm/--cache)")
    p.add_argument("--name", default=None, help="predictor name (default: --out's file name without .preds...)")
    p.add_argument("--batch-size", type=count_int, default=256)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast for the --vlm image tower (default float32: exact, and on CPUs without "
                        "native bf16 several times faster; CNNs always run in float32)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="predictions file to write, e.g. teacher.preds.safetensors")
    add_folder_args(p)
    add_allow_code(p)
    p.set_defaults(func=cmd_predict, interrupt_hint="nothing was written")

    a = subparsers.add_parser("analyze", help="calibration, quadrants, consistency, agreement of predictions files",
                              description="Writes DIR/analysis.json and DIR/analysis.md. When the names include "
                              "both 'teacher' and 'fused', the flow teacher:fused is added automatically; a "
                              "predictor named 'teacher' is the default --reference.")
    a.add_argument("predictions", nargs="+", help="predictions files written by `richkd predict`")
    a.add_argument("--names", default=None, help="comma-separated names, one per file (default: their own)")
    a.add_argument("--tau", type=unit_float, default=0.5, help="confidence threshold τ of the quadrants")
    a.add_argument("--n-bins", type=count_int, default=15, help="calibration bins")
    a.add_argument("--flow", action="append", default=[], metavar="FROM:TO", help="quadrant flow; repeatable")
    a.add_argument("--agreement", action="append", default=[], metavar="REF:OTHER",
                   help="top-1 agreement and KL(REF ‖ OTHER); repeatable")
    a.add_argument("--semantic", default=None, metavar="vlm:SPEC | cache:DIR",
                   help="class-name similarity from a model's text tower or a target cache's class embeddings")
    a.add_argument("--templates", default=None, help="prompt template file for --semantic vlm:... (default: 12)")
    a.add_argument("--reference", default=None, help="predictor the others' class matrices are compared with")
    a.add_argument("--device", default="cpu", help="device of the --semantic vlm text tower")
    a.add_argument("--out", required=True, help="output directory")
    a.set_defaults(func=cmd_analyze, interrupt_hint="nothing was written")



def cmd_predict(args: argparse.Namespace) -> int:
    from richkd.analysis.predict import PredictOptions
    from richkd.api import predict

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    opts = PredictOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PredictOptions)
                             if f.name != "folder"}, folder=folder_for(args, args.checkpoint))
    result = predict(**{f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)})
    print(f"{result.path}: {result.provenance['name']} ({result.kind}) on {result.provenance['dataset']}/"
          f"{result.provenance['split']}, {result.rows} rows, top-1 {result.top1:.2f} % ({result.seconds:.1f} s)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from richkd.analysis.analyze_files import parse_pairs
    from richkd.api import analyze
    from richkd.engine.io import check_writable

    check_writable(Path(args.out), "--out")
    flows, agreements = parse_pairs(args.flow, "--flow"), parse_pairs(args.agreement, "--agreement")
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    result = analyze(args.predictions, args.out, names=names, tau=args.tau, n_bins=args.n_bins, flows=flows,
                     agreements=agreements, semantic=args.semantic, templates=args.templates,
                     reference=args.reference, device=args.device)
    print(result.markdown, end="")
    return 0

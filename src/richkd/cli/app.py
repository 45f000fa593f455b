"""richkd: knowledge distillation from a fused CNN + vision-language teacher (RichKD), with KD/DKD/CRD baselines.

Commands: demo | train | eval | models | config | vlm | predict | analyze | robustness | cost | report | doctor.
`richkd COMMAND --help` says more. Thin layer: parse, call `richkd.api`, print; errors are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from richkd.cli.args import (
    OneLineParser,
    add_allow_code,
    add_folder_args,
    check_out_file,
    count_int,
    folder_for,
    threads_int,
)
from richkd.errors import EXPECTED_CLASSES, RichKDError, expected_failure

log = logging.getLogger("richkd")


def _setup(threads: int | None, verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("richkd").setLevel(logging.INFO)
    set_threads(threads)


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads; 0 or negative is refused here as one line (torch raises a RuntimeError)."""
    if threads is None:
        return
    if not 1 <= threads <= 4096:
        raise RichKDError(f"--threads / train.threads must be in [1, 4096], got {threads}")
    torch.set_num_threads(threads)


def cmd_train(args: argparse.Namespace) -> int:
    from richkd.api import compose_with_layers, train
    from richkd.engine import dist

    cfg, layers = compose_with_layers(args.dataset, args.pair, args.method, args.overrides, args.config)
    _setup(cfg.train.threads, verbose=True)
    try:
        result = train(cfg, resume=args.resume, layers=layers, allow_code=args.allow_code)
    except KeyboardInterrupt:
        resume_cmd = "the same command" + ("" if args.resume else " plus --resume")
        has_ckpt = (Path(cfg.out_dir) / "checkpoint.pt").exists()
        args.interrupt_hint = (
            f"continue with {resume_cmd}" if has_ckpt else "stopped before the first epoch ended: nothing was kept"
        )
        raise
    if dist.launch_rank() == 0:
        print(json.dumps(result.summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from richkd.api import evaluate
    from richkd.engine.io import write_json_atomic

    _setup(args.threads, verbose=False)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out)
    result = evaluate(args.checkpoint, dataset=args.dataset, root=args.root, split=args.split, limit=args.limit,
                      arch=args.arch, batch_size=args.batch_size, device=args.device,
                      announce=lambda line: print(line, file=sys.stderr, flush=True),
                      folder=folder_for(args, args.checkpoint), allow_code=args.allow_code)
    if out is not None:
        write_json_atomic(out, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from richkd.api import compose, config_text
    from richkd.config_docs import describe_keys

    if args.config_command == "keys":
        print(describe_keys(), end="")
        return 0
    print(config_text(compose(args.dataset, args.pair, args.method, args.overrides, args.config)), end="")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from richkd.recipes import PAIRS, dataset_method_layers, dataset_names, method_names
    from richkd.recipes.pairs import IMAGENET_PAIRS

    print("datasets (--dataset):", ", ".join(dataset_names()))
    print("methods  (--method): ", ", ".join(method_names()))
    from richkd.distill.features import FEATURE_TERMS

    print("feature methods (feature.method=NAME: adds to any --method, e.g. --method kd feature.method=at):")
    for name in FEATURE_TERMS.names():
        spec = FEATURE_TERMS.get(name)
        print(f"  {name:<8} weight {spec.default_weight:<8g} reads {spec.taps:<18} {spec.paper}")
    print("pairs    (--pair):   teacher-student; lr = student lr when it differs from the recipe's")
    print(f"  {'pair':<24} {'family':<6} {'dims T/S':>10} {'lr':>5} {'DKD beta':>8}  source")
    for title, table in (("CIFAR (every --dataset but imagenet)", PAIRS), ("ImageNet (--dataset imagenet)",
                                                                          IMAGENET_PAIRS)):
        print(f"  {title}:")
        for pair in table.values():
            lr = "" if pair.lr is None else f"{pair.lr:g}"
            dims = f"{pair.teacher_dim}/{pair.student_dim}"
            name = pair.alias or pair.name
            print(f"  {name:<24} {pair.family:<6} {dims:>10} {lr:>5} {pair.dkd_beta:>8g}  {pair.source}")
            for method, sections in pair.method_overrides.items():
                keys = ", ".join(f"{section}.{key}={value}" for section, values in sections.items()
                                 for key, value in values.items())
                print(f"  {'':<24} --method {method}: {keys}")
    print("dataset layers over a method's preset (recipes/datasets/<dataset>.<method>.yaml):")
    for dataset, methods in dataset_method_layers().items():
        print(f"  {dataset}: {', '.join(methods)}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from richkd.doctor import collect, render

    report = collect()
    print(json.dumps(report, indent=2) if args.json else render(report), end="\n" if args.json else "")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from richkd.api import create_model, list_models

    print(f"{'name':<14} {'params (100 cls)':>16} {'feature_dim':>12}")
    for name in list_models():
        model = create_model(name, 100)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name:<14} {n / 1e6:>15.3f}M {model.feature_dim:>12}")
    return 0


TRAIN_EPILOG = """\
A run is composed from built-in layers (--dataset, --method, --pair; `richkd recipes` lists them), an optional
YAML file (-c, whose `base:` list may name the same layers) and key=value overrides, e.g.
  richkd train --dataset cifar100 --pair resnet32x4-resnet8x4 --method dkd data.root=PATH
  richkd train --dataset cifar10-reduced --pair resnet56-resnet20 --method kd-ls fusion.mode=vlm data.root=PATH
`richkd config show [same arguments]` prints the resolved config; every key:

"""


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset/--pair/--method: the built-in config layers (`richkd recipes` lists them)."""
    parser.add_argument("--dataset", help="dataset recipe, e.g. cifar100 (default with --pair/--method and no -c)")
    parser.add_argument("--pair", help="teacher-student pair, e.g. resnet32x4-resnet8x4 (a single model for teacher)")
    parser.add_argument("--method", help="method preset, e.g. kd, dkd, crd, richkd-lf, control, dkd-fusion")


def build_parser() -> argparse.ArgumentParser:
    from richkd.config_docs import describe_keys

    parser = OneLineParser(
        prog="richkd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train", help="train a teacher or distil a student", epilog=TRAIN_EPILOG + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("-c", "--config", help="YAML config, applied over the --dataset/--method/--pair layers")
    add_layer_arguments(train)
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 (keys below)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in out_dir from its checkpoint"
    )
    add_allow_code(train)
    train.set_defaults(func=cmd_train, interrupt_hint="continue with the same command plus --resume")
    ev = sub.add_parser("eval", help="evaluate a model file on a dataset split")
    ev.add_argument("--checkpoint", required=True, help="model_best.pt / model_last.pt of a run, or an exported "
                    "model.safetensors (its model_card.json beside it)")
    ev.add_argument("--dataset", required=True, help="cifar10 | cifar100 | imagefolder | fashion_mnist")
    ev.add_argument("--root", default=None, help="dataset root (folder or archive)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--limit", type=count_int, default=None, help="a stratified subset of N rows (quick checks)")
    ev.add_argument("--arch", default=None, help="architecture, if the file does not record it")
    ev.add_argument("--batch-size", type=count_int, default=512)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--threads", type=threads_int, default=None)
    add_allow_code(ev)
    ev.add_argument("--out", default=None, help="write the metrics as JSON here")
    add_folder_args(ev)
    ev.set_defaults(func=cmd_eval, interrupt_hint="nothing was written")
    models = sub.add_parser("models", help="list the model zoo")
    models.set_defaults(func=cmd_models)
    doctor = sub.add_parser("doctor", help="this machine for a bug report: CPU flags, torch build, bf16, tcmalloc, "
                            "extras, data locations")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)
    recipes = sub.add_parser("recipes", help="list the built-in datasets, methods and teacher-student pairs")
    recipes.set_defaults(func=cmd_recipes)
    config = sub.add_parser("config", help="print the resolved config of a run, or every config key")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="show | keys")
    show = config_sub.add_parser("show", help="the fully resolved config (every key, defaults filled in)")
    show.add_argument("-c", "--config", help="YAML config; omitted = defaults")
    add_layer_arguments(show)
    show.add_argument("overrides", nargs="*", help="key=value overrides")
    config_sub.add_parser("keys", help="every config key with its type, default and meaning")
    config.set_defaults(func=cmd_config)
    from richkd.cli.analysis import add_analysis_parsers
    from richkd.cli.demo import add_demo_parser
    from richkd.cli.export import add_export_parsers
    from richkd.cli.report import add_report_parser
    from richkd.cli.robustness import add_robustness_parser
    from richkd.cli.shift import add_shift_parser
    from richkd.cli.study import add_study_parser
    from richkd.cli.teacher import add_teacher_parser
    from richkd.cli.vlm import add_vlm_parser

    add_demo_parser(sub)
    add_vlm_parser(sub)
    add_analysis_parsers(sub)
    add_robustness_parser(sub)
    add_shift_parser(sub)
    add_report_parser(sub)
    add_export_parsers(sub)
    add_study_parser(sub)
    add_teacher_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The one edge: a bad argument, a RichKDError or an expected failure of the machine (full disk, read-only
    folder, missing extra, corrupt file; `richkd.errors.expected_failure`) is one line and exit code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code == 2:  # OneLineParser already printed its one line
            return 2
        raise  # --help / --version
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code: int = args.func(args)
        return code
    except BrokenPipeError:  # `richkd doctor | head`: the reader is gone; say nothing more (Python's recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except EXPECTED_CLASSES as err:
        message = expected_failure(err)
        if message is None:
            raise
        print(f"richkd: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        print(f"richkd: interrupted{f' ({hint})' if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

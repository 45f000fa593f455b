"""`richkd` command line: train | eval | models | vlm. Thin: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from richkd.errors import RichKDError

log = logging.getLogger("richkd")


def _setup(threads: int | None, verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("richkd").setLevel(logging.INFO)
    if threads is not None:
        torch.set_num_threads(threads)


def cmd_train(args: argparse.Namespace) -> int:
    from richkd.build import build_fit
    from richkd.config import config_to_dict, dump_config, load_config
    from richkd.engine import dist
    from richkd.engine.io import write_json_atomic, write_text_atomic
    from richkd.engine.trainer import fit

    cfg = load_config(args.config, args.overrides)
    _setup(cfg.train.threads, verbose=True)
    run_dir = Path(cfg.out_dir)
    has_ckpt = (run_dir / "checkpoint.pt").exists()
    if has_ckpt and not args.resume:
        raise RichKDError(f"{run_dir} already holds a run: pass --resume to continue it, or set out_dir=...")
    if args.resume and (run_dir / "config.yaml").exists():
        saved, current = config_to_dict(load_config(run_dir / "config.yaml")), config_to_dict(cfg)
        for d in (saved, current):  # how far one invocation goes, and how fast, does not change the run
            for key in ("stop_after", "progress", "threads"):
                d["train"].pop(key)
        if saved != current:
            raise RichKDError(
                f"--resume: the config differs from {run_dir / 'config.yaml'}; resume with that file"
            )
    torch.manual_seed(cfg.seed)
    device = dist.init_from_env(cfg.train.device)
    parts, provenance = build_fit(cfg, device)
    log.info("%s", provenance["loss"])
    if dist.is_main():
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
        write_json_atomic(run_dir / "run.json", provenance)
    summary = fit(parts, run_dir, resume=args.resume)
    if dist.is_main():
        print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from richkd.data import load_dataset
    from richkd.data.loader import DeviceData
    from richkd.engine.checkpoint import load_model_file, read_model_file
    from richkd.engine.evaluate import evaluate_model
    from richkd.engine.io import write_json_atomic
    from richkd.models import create_model

    _setup(args.threads, verbose=False)
    path = Path(args.checkpoint)
    _, info = read_model_file(path)
    arch = args.arch or info.get("arch")
    if arch is None:
        raise RichKDError(f"{path} does not record its architecture: pass --arch")
    ds = load_dataset(args.dataset, args.root, args.split)
    model = create_model(arch, len(ds.classes))
    load_model_file(path, model, arch=arch, num_classes=len(ds.classes), classes=ds.classes)
    device = torch.device(args.device)
    metrics = evaluate_model(
        model.to(device), DeviceData(ds, device), mean=ds.mean, std=ds.std, batch_size=args.batch_size
    )
    result = {
        "checkpoint": str(path),
        "arch": arch,
        "dataset": ds.name,
        "split": ds.split,
        "rows": len(ds),
        **metrics,
    }
    if args.out:
        write_json_atomic(Path(args.out), result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from richkd.models import create_model, model_names

    print(f"{'name':<14} {'params (100 cls)':>16} {'feature_dim':>12}")
    for name in model_names():
        model = create_model(name, 100)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name:<14} {n / 1e6:>15.3f}M {model.feature_dim:>12}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from richkd.report import load_summaries, render_table

    print(render_table(load_summaries([Path(p) for p in args.runs])), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="richkd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a teacher or distil a student")
    train.add_argument("-c", "--config", help="YAML config (configs/...); omitted = defaults")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in out_dir from its checkpoint"
    )
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="evaluate a model file on a dataset split")
    ev.add_argument("--checkpoint", required=True, help="model_best.pt / model_last.pt of a run")
    ev.add_argument("--dataset", required=True, help="cifar10 | cifar100 | imagefolder | fashion_mnist")
    ev.add_argument("--root", default=None, help="dataset root (folder or archive)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--arch", default=None, help="architecture, if the file does not record it")
    ev.add_argument("--batch-size", type=int, default=512)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--out", default=None, help="write the metrics as JSON here")
    ev.set_defaults(func=cmd_eval)
    models = sub.add_parser("models", help="list the model zoo")
    models.set_defaults(func=cmd_models)
    report = sub.add_parser("report", help="Markdown table of finished runs (mean ± std over seeds)")
    report.add_argument("runs", nargs="+", help="run directories; NAME_s<seed> directories are grouped")
    report.set_defaults(func=cmd_report)
    try:
        from richkd.cli_vlm import add_vlm_parser
    except ImportError:  # the vision-language commands are optional until their module exists
        pass
    else:
        add_vlm_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except RichKDError as err:
        print(f"richkd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("richkd: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

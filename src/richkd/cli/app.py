"""richkd: knowledge distillation from a fused CNN + vision-language teacher (RichKD), with KD/DKD/CRD baselines.

Commands: demo | train | eval | models | config | vlm | predict | analyze | robustness | cost | report | doctor.
`richkd COMMAND --help` says more. Thin layer: parse, call the library, print; errors are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from richkd.cli.args import OneLineParser, add_folder_args, check_out_file, count_int, folder_for, threads_int
from richkd.errors import EXPECTED_CLASSES, RichKDError, expected_failure

if TYPE_CHECKING:
    from richkd.config import RunConfig

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
    from richkd.config import load_config_with_layers

    cfg, layers = load_config_with_layers(
        args.config, args.overrides, dataset=args.dataset, pair=args.pair, method=args.method
    )
    _setup(cfg.train.threads, verbose=True)
    run_dir = Path(cfg.out_dir)
    from richkd.engine.io import check_writable

    check_writable(run_dir, "out_dir")
    with _run_dir_lock(run_dir):  # before any check: two identical commands must not both pass them
        return _train_locked(args, cfg, layers, run_dir)


def _run_dir_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The run directory's writer lock; under DDP only rank 0 (the only rank that writes it) takes it."""
    from richkd.engine.lock import hold

    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return hold(run_dir, "run directory")


def _train_locked(args: argparse.Namespace, cfg: RunConfig, layers: list[str], run_dir: Path) -> int:
    before = set(run_dir.iterdir()) if run_dir.is_dir() else None
    try:
        _check_run_dir(run_dir, resume=args.resume)
    except RichKDError:
        _remove_unstarted_run(run_dir, before)
        raise
    resume_cmd = "the same command" + ("" if args.resume else " plus --resume")
    if args.resume:
        _check_same_student(cfg, run_dir)
    if args.resume and (run_dir / "config.yaml").exists():
        _check_same_config(cfg, run_dir)
    from richkd.engine.device import check_device

    check_device(cfg.train.device, "train.device")
    try:
        return _train(cfg, run_dir, resume=args.resume, layers=layers)
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt) and expected_failure(err) is None:
            raise  # a bug: its traceback stays, and so do its files (evidence)
        _remove_unstarted_run(run_dir, before)
        has_ckpt = (run_dir / "checkpoint.pt").exists()
        args.interrupt_hint = (
            f"continue with {resume_cmd}" if has_ckpt else "stopped before the first epoch ended: nothing was kept"
        )
        raise


def _check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """Fail before any work: output not writable, a run already there, or nothing to resume.

    Leftovers of a killed writer (temp files with a dead PID in their name) are removed first: they never block.
    """
    from richkd.engine.io import check_writable, remove_stale

    check_writable(run_dir, "out_dir")
    remove_stale(run_dir)
    has_ckpt = (run_dir / "checkpoint.pt").exists()
    if has_ckpt and not resume:
        raise RichKDError(f"{run_dir} already holds a run: pass --resume to continue it, or set out_dir=...")
    if resume and not has_ckpt:
        what = "does not exist" if not _has_files(run_dir) else "holds no checkpoint.pt (no epoch finished yet)"
        raise RichKDError(f"--resume: {run_dir} {what}: check out_dir, or drop --resume to start the run")


def _has_files(run_dir: Path) -> bool:
    from richkd.engine.lock import LOCK_NAME

    return run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())


def _check_same_student(cfg: RunConfig, run_dir: Path) -> None:
    """--resume of a run with another student: one line naming both, before the run's files are touched."""
    from richkd.engine.checkpoint import recorded_student

    saved = recorded_student(run_dir)
    if saved is not None and saved != cfg.model.student:
        raise RichKDError(
            f"--resume: {run_dir} trained a {saved} student but the config names model.student={cfg.model.student}: "
            f"resume with model.student={saved} (the run's config.yaml), or start a new run in another out_dir"
        )


def _check_same_config(cfg: RunConfig, run_dir: Path) -> None:
    from richkd.config import config_to_dict, load_config

    saved, current = _flatten(config_to_dict(load_config(run_dir / "config.yaml"))), _flatten(config_to_dict(cfg))
    # how far one invocation goes, and how fast, does not change the run
    changed = sorted(
        key
        for key in saved.keys() | current.keys()
        if saved.get(key) != current.get(key) and key not in ("train.stop_after", "train.progress", "train.threads")
    )
    if changed:
        shown = "; ".join(f"{key}: {saved.get(key)!r} in the run, {current.get(key)!r} now" for key in changed[:3])
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise RichKDError(
            f"--resume: {', '.join(changed)} differ from {run_dir / 'config.yaml'} ({shown}{more}); resume with "
            "that file"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _remove_unstarted_run(run_dir: Path, before: set[Path] | None) -> None:
    """A run that failed before its first checkpoint leaves nothing behind (no half-made run directory)."""
    from richkd.engine import dist

    if dist.launch_rank() != 0 or (run_dir / "checkpoint.pt").exists():  # the group is left by now
        return
    from richkd.engine.lock import LOCK_NAME

    for path in set(run_dir.iterdir()) - (before or set()) if run_dir.is_dir() else ():
        if path.is_file() and path.name != LOCK_NAME:  # the lock goes when it is released (then the folder)
            path.unlink(missing_ok=True)
    if before is None and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _previous_run(run_dir: Path) -> dict[str, Any] | None:
    """The run.json of the run being resumed (None if it has none), for build_fit's subset check."""
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RichKDError(f"--resume: {path} is not valid JSON ({exc})") from None
    return previous if isinstance(previous, dict) else None


def _train(cfg: RunConfig, run_dir: Path, *, resume: bool, layers: list[str] | None = None) -> int:
    from richkd.build import build_fit
    from richkd.config import dump_config
    from richkd.engine import dist
    from richkd.engine.io import write_json_atomic, write_text_atomic
    from richkd.engine.trainer import fit

    torch.manual_seed(cfg.seed)
    device = dist.init_from_env(cfg.train.device)
    is_main = dist.is_main()
    ok = False
    try:  # the process group is left on every path out, before interpreter exit (dist.shutdown says why)
        parts, provenance = build_fit(cfg, device, previous=_previous_run(run_dir) if resume else None)
        provenance["config_layers"] = layers or []
        log.info("%s", provenance["loss"])
        if provenance["teacher_targets"]:
            log.info("teacher targets: %s", provenance["teacher_targets"])
        if dist.is_main():
            write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
            write_json_atomic(run_dir / "run.json", provenance)
        summary = fit(parts, run_dir, resume=resume)
        del parts  # the student, its optimizer and data: nothing that touched the group outlives it
        ok = True
    finally:
        dist.shutdown(ok=ok)
    if is_main:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from richkd.data import load_dataset
    from richkd.data.loader import DeviceData
    from richkd.data.subset import limited
    from richkd.engine.checkpoint import load_model_file, read_model_file
    from richkd.engine.device import check_device
    from richkd.engine.evaluate import evaluate_model
    from richkd.engine.io import write_json_atomic
    from richkd.models import create_model

    _setup(args.threads, verbose=False)
    device = check_device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out)
    path = Path(args.checkpoint)
    arch: str | None
    if path.suffix == ".safetensors":  # an exported model: weights + model card, no training files needed
        from richkd.export.load import load_exported

        exported = load_exported(path)
        arch, model, mean, std = exported.arch, exported.module, exported.spec.mean, exported.spec.std
        ds, rows = limited(load_dataset(args.dataset, args.root, args.split, folder=folder_for(args, path)), args.limit)
        if exported.classes != ds.classes:
            raise RichKDError(f"{path}'s model card lists other classes (or another order) than {ds.name}")
    else:
        _, info = read_model_file(path)
        arch = args.arch or info.get("arch")
        if arch is None:
            raise RichKDError(f"{path} does not record its architecture: pass --arch")
        ds, rows = limited(load_dataset(args.dataset, args.root, args.split, folder=folder_for(args, path)), args.limit)
        model = create_model(arch, len(ds.classes))
        load_model_file(path, model, arch=arch, num_classes=len(ds.classes), classes=ds.classes)
        mean, std = ds.mean, ds.std
    assert model is not None
    print(f"evaluating {arch} on {ds.name}/{ds.split} ({len(ds)} images, {device}) ...", file=sys.stderr, flush=True)
    metrics = evaluate_model(model.to(device), DeviceData(ds, device), mean=mean, std=std, batch_size=args.batch_size)
    result = {
        "checkpoint": str(path),
        "arch": arch,
        "dataset": ds.name,
        "split": ds.split,
        "rows": len(ds),
        "subset": None if rows is None else rows.describe(),
        **metrics,
    }
    if out is not None:
        write_json_atomic(out, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from richkd.config import dump_config, load_config
    from richkd.config_docs import describe_keys

    if args.config_command == "keys":
        print(describe_keys(), end="")
        return 0
    cfg = load_config(args.config, args.overrides, dataset=args.dataset, pair=args.pair, method=args.method)
    print(dump_config(cfg), end="")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from richkd.recipes import PAIRS, dataset_names, method_names
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
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from richkd.doctor import collect, render

    report = collect()
    print(json.dumps(report, indent=2) if args.json else render(report), end="\n" if args.json else "")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from richkd.models import create_model, model_names

    print(f"{'name':<14} {'params (100 cls)':>16} {'feature_dim':>12}")
    for name in model_names():
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

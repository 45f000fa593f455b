"""`richkd robustness`: accuracy of one or more checkpoints under the 19 CIFAR-C corruptions (generated or the
official files) and on distribution-shift image folders -> DIR/robustness.json and DIR/robustness.md.

Thin: parse, load, call `richkd.robustness`, write. RichKDError propagates to `richkd.cli.app.main` (one line).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from richkd.cli.args import add_folder_args, count_int, folder_for, seed_int, threads_int
from richkd.engine.io import file_sha256, parse_named
from richkd.errors import RichKDError

log = logging.getLogger(__name__)


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
    p.set_defaults(func=cmd_robustness)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RichKDError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,3,5") from None


def _load_models(
    paths: dict[str, str], archs: dict[str, str], classes: tuple[str, ...], device: torch.device
) -> tuple[dict[str, nn.Module], dict[str, dict[str, str]]]:
    from richkd.engine.checkpoint import load_model_file, read_model_file
    from richkd.models import create_model

    models: dict[str, nn.Module] = {}
    info: dict[str, dict[str, str]] = {}
    for name, raw in paths.items():
        path = Path(raw).expanduser()
        _, meta = read_model_file(path)
        arch = archs.get(name) or meta.get("arch")
        if arch is None:
            raise RichKDError(f"{path} does not record its architecture: pass --arch {name}=ARCH")
        model = create_model(arch, len(classes))
        load_model_file(path, model, arch=arch, num_classes=len(classes), classes=classes)
        models[name] = model.to(device).eval()
        info[name] = {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "arch": arch}
    return models, info


def _official_source(root: str, rows: Tensor | None, labels: Tensor) -> Any:
    from richkd.robustness.official import load_official_c

    def source(corruption: str, severity: int) -> tuple[Tensor, Tensor]:
        images, official_labels = load_official_c(root, corruption, severity)
        if rows is not None and int(rows.max()) < official_labels.shape[0]:
            images, official_labels = images[rows], official_labels[rows]
        if not torch.equal(official_labels, labels):
            raise RichKDError(
                f"the images/labels of {root}/{corruption}.npy do not line up with the dataset's {labels.shape[0]} "
                "rows: the -C files follow the official test-set order, so use --dataset cifar10/cifar100 (the "
                "official files), not an image folder"
            )
        return images, official_labels

    return source


def render_markdown(result: dict[str, Any]) -> str:
    """Per corruption the mean over severities for every model, then clean, mCA, relative robustness, shift sets."""
    names = list(result["models"])
    head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"

    def row(label: str, values: list[float | None], fmt: str = "{:.2f}") -> str:
        return f"| {label} | " + " | ".join("–" if v is None else fmt.format(v) for v in values) + " |\n"

    body = ""
    for corruption in result["corruptions"]:
        accs = [result["models"][m]["per_corruption"][corruption] for m in names]
        body += row(corruption, [sum(a) / len(a) for a in accs])
    body += row("**clean top-1**", [result["models"][m]["clean_top1"] for m in names])
    body += row("**mean corruption acc.**", [result["models"][m]["mean_corruption_accuracy"] for m in names])
    body += row("**relative robustness**", [result["models"][m]["relative_robustness"] for m in names], "{:.3f}")
    for shift_name, accs in result["shift"].items():
        body += row(f"shift: {shift_name}", [accs[m] for m in names])
    title = (
        f"Top-1 % on {result['dataset']}/{result['split']} ({result['n_images']} images, {result['source']} "
        f"corruptions, severities {','.join(map(str, result['severities']))}, seed {result['seed']}); "
        "corruption rows: mean over severities\n\n"
    )
    return title + head + body


def cmd_robustness(args: argparse.Namespace) -> int:
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable, write_json_atomic, write_text_atomic
    from richkd.robustness.corruptions import CORRUPTIONS, check_corruption
    from richkd.robustness.evaluate import count_correct, evaluate_robustness
    from richkd.robustness.official import load_shift_set

    start = time.perf_counter()
    out = Path(args.out)
    check_writable(out, "--out")
    checkpoints = parse_named(args.checkpoint, "--checkpoint")
    archs, shifts = parse_named(args.arch, "--arch", "ARCH"), parse_named(args.shift, "--shift", "FOLDER")
    if unknown := sorted(set(archs) - set(checkpoints)):
        raise RichKDError(f"--arch names {unknown} match no --checkpoint")
    corruptions = [c.strip() for c in args.corruptions.split(",") if c.strip()] if args.corruptions else CORRUPTIONS
    severities = _int_list(args.severities, "--severities")
    for name in corruptions:
        check_corruption(name)
    for s in severities:
        check_corruption("gaussian_noise", s)
    if not corruptions or not severities:
        raise RichKDError("--corruptions and --severities must each name at least one value")
    if args.limit is not None and args.limit < 1:
        raise RichKDError("--limit must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = check_device(args.device)
    from richkd.engine.checkpoint import read_model_file

    for raw in checkpoints.values():  # corrupt or hostile: fail before the dataset is decoded
        read_model_file(Path(raw).expanduser())

    folder = folder_for(args, Path(next(iter(checkpoints.values()))).expanduser())
    ds, subset = limited(load_dataset(args.dataset, args.root, args.split, folder=folder), args.limit)
    images, labels, rows = ds.images, ds.labels, None if subset is None else subset.rows
    models, info = _load_models(checkpoints, archs, ds.classes, device)
    size = int(images.shape[2])
    shift_sets = {
        name: load_shift_set(folder, args.split, classes=ds.classes, image_size=size) for name, folder in shifts.items()
    }
    source = _official_source(args.official_c, rows, labels) if args.official_c else None
    if args.official_c:
        from richkd.robustness.official import open_official_c

        for name in corruptions:  # fail now, not after an hour, when a file is missing, corrupt or hostile
            if not (Path(args.official_c) / f"{name}.npy").is_file():
                missing = Path(args.official_c) / f"{name}.npy"
                raise RichKDError(f"{missing} not found: is --official-c the extracted -C folder?")
            open_official_c(args.official_c, name)

    per_model = evaluate_robustness(
        models, images, labels, mean=ds.mean, std=ds.std, corruptions=corruptions, severities=severities,
        batch_size=args.batch_size, device=device, seed=args.seed, rows=rows, source=source, progress=True,
    )  # fmt: skip
    shift: dict[str, dict[str, float]] = {}
    for set_name, (x, y) in shift_sets.items():
        shift[set_name] = {
            m: 100.0 * count_correct(model, x, y, mean=ds.mean, std=ds.std, batch_size=args.batch_size, device=device)
            / max(int(y.shape[0]), 1)
            for m, model in models.items()
        }
    result = {
        "version": 1, "dataset": ds.name, "split": ds.split, "n_images": int(images.shape[0]), "seed": args.seed,
        "source": "official" if args.official_c else "generated",
        "corruptions": list(corruptions), "severities": severities,
        "models": {name: {**info[name], **per_model[name]} for name in models},
        "shift": shift, "wall_s": round(time.perf_counter() - start, 2),
    }  # fmt: skip
    table = render_markdown(result)
    write_json_atomic(out / "robustness.json", result)
    write_text_atomic(out / "robustness.md", table)
    print(table, end="")
    return 0

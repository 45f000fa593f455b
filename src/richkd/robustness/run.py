"""A robustness evaluation end to end: load model files, corrupt a split (generated CIFAR-C corruptions or the
official -C files), add distribution-shift folders, write DIR/robustness.json and DIR/robustness.md
(`richkd robustness`; `render_markdown` is also the study's per-model table)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from richkd.engine.io import file_sha256
from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.data import FolderOptions

log = logging.getLogger(__name__)

__all__ = ["parse_int_list", "render_markdown", "run_robustness"]


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RichKDError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,3,5") from None


def _load_models(
    paths: dict[str, str], archs: dict[str, str], classes: tuple[str, ...], device: torch.device, *,
    allow_code: bool = False,
) -> tuple[dict[str, nn.Module], dict[str, dict[str, str]]]:
    from richkd.models.files import model_from_file

    models: dict[str, nn.Module] = {}
    info: dict[str, dict[str, str]] = {}
    for name, raw in paths.items():
        path = Path(raw).expanduser()
        model, arch = model_from_file(path, classes, arch=archs.get(name), allow_code=allow_code,
                                      arch_flag=f"--arch {name}=ARCH")
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


def run_robustness(
    checkpoints: Mapping[str, str | Path], out: str | Path, *, dataset: str, root: str | None = None,
    split: str = "test", limit: int | None = None, archs: Mapping[str, str] | None = None,
    corruptions: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
    official_c: str | None = None, shifts: Mapping[str, str] | None = None, seed: int = 0, batch_size: int = 512,
    device: str = "cpu", progress: bool = False, folder: FolderOptions | None = None, allow_code: bool = False,
) -> dict[str, Any]:
    """Accuracy of every model file (NAME -> path) under each corruption x severity (each corrupted batch shared
    by all models) and on each shift folder; writes OUT/robustness.json and OUT/robustness.md, returns the JSON's
    content. `corruptions` None: all 19. `allow_code`: a `module:PKG.MOD:FACTORY` model may run user code."""
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.engine.checkpoint import read_model_file
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable, write_json_atomic, write_text_atomic
    from richkd.robustness.corruptions import CORRUPTIONS, check_corruption
    from richkd.robustness.evaluate import count_correct, evaluate_robustness
    from richkd.robustness.official import load_shift_set

    start = time.perf_counter()
    out = Path(out)
    check_writable(out, "--out")
    archs, shifts = dict(archs or {}), dict(shifts or {})
    paths = {name: str(path) for name, path in checkpoints.items()}
    if not paths:
        raise RichKDError("no model to evaluate: give at least one --checkpoint NAME=PATH")
    if unknown := sorted(set(archs) - set(paths)):
        raise RichKDError(f"--arch names {unknown} match no --checkpoint")
    corruptions = list(corruptions) if corruptions is not None else list(CORRUPTIONS)
    severities = list(severities)
    for name in corruptions:
        check_corruption(name)
    for s in severities:
        check_corruption("gaussian_noise", s)
    if not corruptions or not severities:
        raise RichKDError("--corruptions and --severities must each name at least one value")
    if limit is not None and limit < 1:
        raise RichKDError("--limit must be >= 1")
    torch_device = check_device(device)
    for raw in paths.values():  # corrupt or hostile: fail before the dataset is decoded
        read_model_file(Path(raw).expanduser())

    ds, subset = limited(load_dataset(dataset, root, split, folder=folder), limit)
    images, labels, rows = ds.images, ds.labels, None if subset is None else subset.rows
    models, info = _load_models(paths, archs, ds.classes, torch_device, allow_code=allow_code)
    size = int(images.shape[2])
    shift_sets = {
        name: load_shift_set(shift_root, split, classes=ds.classes, image_size=size, folder=folder)
        for name, shift_root in shifts.items()
    }
    source = _official_source(official_c, rows, labels) if official_c else None
    if official_c:
        from richkd.robustness.official import open_official_c

        for name in corruptions:  # fail now, not after an hour, when a file is missing, corrupt or hostile
            if not (Path(official_c) / f"{name}.npy").is_file():
                missing = Path(official_c) / f"{name}.npy"
                raise RichKDError(f"{missing} not found: is --official-c the extracted -C folder?")
            open_official_c(official_c, name)

    per_model = evaluate_robustness(
        models, images, labels, mean=ds.mean, std=ds.std, corruptions=corruptions, severities=severities,
        batch_size=batch_size, device=torch_device, seed=seed, rows=rows, source=source, progress=progress,
    )  # fmt: skip
    shift: dict[str, dict[str, float]] = {}
    for set_name, (x, y) in shift_sets.items():
        shift[set_name] = {
            m: 100.0 * count_correct(model, x, y, mean=ds.mean, std=ds.std, batch_size=batch_size,
                                     device=torch_device) / max(int(y.shape[0]), 1)
            for m, model in models.items()
        }
    result = {
        "version": 1, "dataset": ds.name, "split": ds.split, "n_images": int(images.shape[0]), "seed": seed,
        "source": "official" if official_c else "generated",
        "corruptions": list(corruptions), "severities": severities,
        "models": {name: {**info[name], **per_model[name]} for name in models},
        "shift": shift, "wall_s": round(time.perf_counter() - start, 2),
    }  # fmt: skip
    write_json_atomic(out / "robustness.json", result)
    write_text_atomic(out / "robustness.md", render_markdown(result))
    return result

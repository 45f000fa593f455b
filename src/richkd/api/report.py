"""Reports and costs: the Markdown table of finished runs, the HTML + Markdown report with figures, and the
parameters, FLOPs, latency and throughput of model files (`richkd report`, `richkd cost`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from richkd.errors import RichKDError

__all__ = ["DEFAULT_TITLE", "ReportFiles", "measure_cost", "summary_table", "write_report"]

DEFAULT_TITLE = "RichKD report"


@dataclass(frozen=True)
class ReportFiles:
    """The report written: report.md and report.html (figures embedded)."""

    markdown: Path
    html: Path


def summary_table(runs: Sequence[str | Path]) -> str:
    """The Markdown table of finished runs' summaries (NAME_s<seed> directories grouped, mean ± std)."""
    from richkd.report import load_summaries, render_table

    return render_table(load_summaries([Path(p) for p in runs]))


def write_report(
    runs: Sequence[str | Path], out: str | Path, *, analysis: str | Path | None = None,
    robustness: str | Path | None = None, cost: str | Path | None = None, title: str = DEFAULT_TITLE,
) -> ReportFiles:
    """OUT/report.md and OUT/report.html of finished runs, with the sections of an analysis.json, a
    robustness.json and a cost.json when given."""
    from richkd.engine.io import check_writable, write_text_atomic
    from richkd.report.build import build_report

    folder = Path(out)
    check_writable(folder, "--out")

    def path(value: str | Path | None) -> Path | None:
        return None if value is None else Path(value)

    html, markdown = build_report([Path(p) for p in runs], analysis=path(analysis), robustness=path(robustness),
                                  cost=path(cost), title=title)
    write_text_atomic(folder / "report.md", markdown)
    write_text_atomic(folder / "report.html", html)
    return ReportFiles(markdown=folder / "report.md", html=folder / "report.html")


def measure_cost(
    checkpoints: Mapping[str, str | Path], out: str | Path, *, device: str = "cpu", image_size: int | None = None,
    repeats: int = 20, warmup: int = 3, allow_code: bool = False,
) -> dict[str, Any]:
    """Parameters, FLOPs, batch-1 latency and batch-256 throughput of model files (NAME -> path); writes
    OUT/cost.json and returns its content. Every file is loaded before any is timed. `image_size` None: the input
    size the model files record (the run's resolution), else 32 (CIFAR). `allow_code`: the opt-in that a
    `module:PKG.MOD:FACTORY` model may import and run user code."""
    import torch

    from richkd.analysis.cost import cpu_name, measure_cost
    from richkd.engine.checkpoint import load_weights_strict, read_model_file
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable, file_sha256, write_json_atomic
    from richkd.models import create_model

    found = {name: Path(p) for name, p in checkpoints.items()}
    for name, path in found.items():
        if not path.is_file():
            raise RichKDError(f"--checkpoint {name}: {path} not found")
    if (image_size is not None and image_size < 1) or repeats < 1 or warmup < 0:
        raise RichKDError("--image-size and --repeats must be ≥ 1 and --warmup ≥ 0")
    torch_device = check_device(device)
    folder = Path(out)
    check_writable(folder, "--out")
    models = {}
    for name, path in found.items():  # load every file before timing any, so a bad one fails at once
        state, info = read_model_file(path)
        if not info:
            raise RichKDError(f"--checkpoint {name}: {path} does not record its architecture (not a richkd "
                              "model file); use model_best.pt / model_last.pt of a richkd run")
        model = create_model(info["arch"], int(info["num_classes"]), allow_code=allow_code)
        load_weights_strict(model, state, source=path, arch=info["arch"])
        models[name] = (model.to(torch_device), info, path)
    recorded = {tuple(info["input_size"]) for _, info, _ in models.values() if info.get("input_size") is not None}
    if image_size is None and len(recorded) > 1:
        raise RichKDError(f"the model files record different input sizes ({sorted(recorded)}): pass --image-size")
    size = image_size or (int(min(next(iter(recorded)))) if recorded else 32)
    input_shape = (3, size, size)
    result: dict[str, Any] = {
        "version": 1,
        "device": str(torch_device),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "input": list(input_shape),
        "repeats": repeats,
        "warmup": warmup,
        "models": {},
    }
    for name, (model, info, path) in models.items():
        measured = measure_cost(model, input_shape=input_shape, device=torch_device, repeats=repeats, warmup=warmup)
        result["models"][name] = {"arch": info["arch"], "checkpoint": str(path), "checkpoint_sha256": file_sha256(path),
                                  **measured}
    write_json_atomic(folder / "cost.json", result)
    return result

"""Deployment: export a trained student (safetensors + model card, optionally ONNX checked against PyTorch) and
classify image files with any model file (`richkd export`, `richkd classify`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.export.classify import Prediction
    from richkd.export.load import LoadedModel

__all__ = ["bench_export", "classify", "export_model"]

OnError = Callable[[Path, str], None]


def _raise(path: Path, reason: str) -> None:
    raise RichKDError(f"cannot read {path}: {reason}")


def export_model(
    model: str | Path, out: str | Path, *, onnx: bool = False, check_images: Sequence[str] | None = None,
    on_error: OnError | None = None, allow_code: bool = False,
) -> dict[str, Any]:
    """OUT/model.safetensors + OUT/model_card.json (+ OUT/model.onnx, checked with ONNX Runtime on
    `check_images`, files/folders/globs, else random inputs); returns the model card. An undecodable check image
    calls `on_error(path, reason)` (default: a RichKDError). `allow_code`: the opt-in that a
    `module:PKG.MOD:FACTORY` model may import and run user code."""
    from richkd.engine.io import check_writable
    from richkd.export.exporter import export_model as write_export
    from richkd.export.images import collect_images
    from richkd.export.load import load_model
    from richkd.export.onnx_export import require

    folder = Path(out)
    check_writable(folder, "--out")
    if check_images and not onnx:
        raise RichKDError("--check compares ONNX Runtime with PyTorch: add --onnx")
    if onnx:  # fail before any work when the extra is missing
        require("onnx")
        require("onnxruntime")
    images = collect_images(list(check_images)) if check_images else None
    loaded = load_model(Path(model), allow_code=allow_code)
    return write_export(loaded, folder, onnx=onnx, check_images=images, on_error=on_error or _raise)


def bench_export(
    model: str | Path, out: str | Path, *, repeats: int = 50, warmup: int = 5, allow_code: bool = False
) -> dict[str, Any]:
    """Batch-1 latency and batch-256 throughput, ONNX Runtime and PyTorch, of the student exported to `out` by
    `export_model(model, out, onnx=True)` and of its run's CNN teacher (when that file is still on this machine);
    writes OUT/bench.json and returns its content (medians over `repeats` timed runs, CPU threads as set)."""
    from richkd.export.bench import bench_export as run_bench
    from richkd.export.card import CARD_NAME, read_card
    from richkd.export.load import load_model
    from richkd.export.onnx_export import require

    require("onnxruntime")
    folder = Path(out)
    card = read_card(folder / CARD_NAME)
    loaded = load_model(Path(model), allow_code=allow_code)
    return run_bench(loaded, card, folder, repeats=repeats, warmup=warmup, allow_code=allow_code)


def classify(
    model: str | Path | LoadedModel, inputs: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 256,
    device: str = "cpu", threads: int | None = None, progress: bool = False, on_error: OnError | None = None,
    allow_code: bool = False,
) -> list[Prediction]:
    """The top-k classes (indices and probabilities, most probable first) of image files, folders (recursive)
    or globs, with a model file (.pt, .safetensors or .onnx) or a model that `load_model` returned. An
    undecodable image calls `on_error(path, reason)` and is skipped (default: a RichKDError). `allow_code`: a
    `module:PKG.MOD:FACTORY` model may run user code."""
    from richkd.engine.device import check_device
    from richkd.export.classify import classify_images
    from richkd.export.images import collect_images
    from richkd.export.load import LoadedModel, load_model

    torch_device = check_device(device)
    paths = collect_images([str(p) for p in inputs])
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load_model(Path(model), threads=threads, device=torch_device, allow_code=allow_code)
    return classify_images(loaded, paths, top_k=top_k, batch_size=batch_size, progress=progress,
                           on_error=on_error or _raise)

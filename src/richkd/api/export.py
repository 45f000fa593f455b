"""Deployment: export a trained student (safetensors + model card, optionally ONNX checked against PyTorch) and
classify image files with any model file (`richkd export`, `richkd classify`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.export.classify import Prediction

__all__ = ["classify", "export_model"]

OnError = Callable[[Path, str], None]


def _raise(path: Path, reason: str) -> None:
    raise RichKDError(f"cannot read {path}: {reason}")


def export_model(
    model: str | Path, out: str | Path, *, onnx: bool = False, check_images: Sequence[str] | None = None,
    on_error: OnError | None = None,
) -> dict[str, Any]:
    """OUT/model.safetensors + OUT/model_card.json (+ OUT/model.onnx, checked with ONNX Runtime on
    `check_images`, files/folders/globs, else random inputs); returns the model card. An undecodable check image
    calls `on_error(path, reason)` (default: a RichKDError)."""
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
    loaded = load_model(Path(model))
    return write_export(loaded, folder, onnx=onnx, check_images=images, on_error=on_error or _raise)


def classify(
    model: str | Path, inputs: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 256, device: str = "cpu",
    threads: int | None = None, progress: bool = False, on_error: OnError | None = None,
) -> list[Prediction]:
    """The top-k classes (indices and probabilities, most probable first) of image files, folders (recursive)
    or globs, with a model file (.pt, .safetensors or .onnx). An undecodable image calls `on_error(path, reason)`
    and is skipped (default: a RichKDError)."""
    from richkd.engine.device import check_device
    from richkd.export.classify import classify_images
    from richkd.export.images import collect_images
    from richkd.export.load import load_model

    torch_device = check_device(device)
    paths = collect_images([str(p) for p in inputs])
    loaded = load_model(Path(model), threads=threads, device=torch_device)
    return classify_images(loaded, paths, top_k=top_k, batch_size=batch_size, progress=progress,
                           on_error=on_error or _raise)

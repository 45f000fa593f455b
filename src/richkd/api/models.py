"""Models: the zoo (create, list), trained or exported model files (load), and their accuracy on a split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.data import FolderOptions
    from richkd.export.load import LoadedModel
    from richkd.models.base import ZooModel

log = logging.getLogger("richkd")

__all__ = ["create_model", "evaluate", "list_models", "load_model"]


def create_model(name: str, num_classes: int) -> ZooModel:
    """A fresh zoo model (`list_models()` names them); every one returns ModelOutput(logits, pooled, features)."""
    from richkd.models import create_model as create

    return create(name, num_classes)


def list_models() -> list[str]:
    """Every zoo architecture name, sorted."""
    from richkd.models import model_names

    return model_names()


def load_model(
    path: str | Path, *, device: str = "cpu", threads: int | None = None, allow_code: bool = False
) -> LoadedModel:
    """A ready classifier from a run's model_last.pt / model_best.pt, an exported model.safetensors (+ card) or a
    model.onnx; `.logits(x)` maps a normalised [B, 3, H, W] batch to logits, `.module` is the torch model.
    `allow_code`: the opt-in that a `module:PKG.MOD:FACTORY` model may import and run user code."""
    from richkd.engine.device import check_device
    from richkd.export.load import load_model as load

    return load(Path(path), threads=threads, device=check_device(device), allow_code=allow_code)


def evaluate(
    checkpoint: str | Path, *, dataset: str, root: str | None = None, split: str = "test", limit: int | None = None,
    arch: str | None = None, batch_size: int = 512, device: str = "cpu", announce: Callable[[str], None] | None = None,
    folder: FolderOptions | None = None, allow_code: bool = False,
) -> dict[str, Any]:
    """top-1/top-5, NLL and ECE of a model file (a run's .pt, or an exported .safetensors) on `dataset/split`
    (a stratified subset of `limit` rows; `folder`: how an image folder is read); the dict `richkd eval --out`
    writes. `announce` receives one line saying what is about to be evaluated, once the model and data are loaded
    (default: the richkd log). `allow_code`: the opt-in that a `module:PKG.MOD:FACTORY` model may run user code."""
    from richkd.data import load_dataset
    from richkd.data.loader import DeviceData
    from richkd.data.subset import limited
    from richkd.engine.checkpoint import read_model_file
    from richkd.engine.device import check_device
    from richkd.engine.evaluate import evaluate_model
    from richkd.models.files import model_from_file

    torch_device = check_device(device)
    path = Path(checkpoint)
    resolved: str | None
    if path.suffix == ".safetensors":  # an exported model: weights + model card, no training files needed
        from richkd.export.load import load_exported

        exported = load_exported(path, allow_code=allow_code)
        resolved, model, mean, std = exported.arch, exported.module, exported.spec.mean, exported.spec.std
        ds, rows = limited(load_dataset(dataset, root, split, folder=folder), limit)
        if exported.classes != ds.classes:
            raise RichKDError(f"{path}'s model card lists other classes (or another order) than {ds.name}")
    else:
        if arch is None and not read_model_file(path)[1].get("arch"):  # before the dataset is decoded
            raise RichKDError(f"{path} does not record its architecture: pass --arch")
        ds, rows = limited(load_dataset(dataset, root, split, folder=folder), limit)
        model, resolved = model_from_file(path, ds.classes, arch=arch, allow_code=allow_code)
        mean, std = ds.mean, ds.std
    assert model is not None
    (announce or log.info)(f"evaluating {resolved} on {ds.name}/{ds.split} ({len(ds)} images, {torch_device}) ...")
    metrics = evaluate_model(model.to(torch_device), DeviceData(ds, torch_device), mean=mean, std=std,
                             batch_size=batch_size)
    return {
        "checkpoint": str(path),
        "arch": resolved,
        "dataset": ds.name,
        "split": ds.split,
        "rows": len(ds),
        "subset": None if rows is None else rows.describe(),
        **metrics,
    }

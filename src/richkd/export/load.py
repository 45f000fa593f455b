"""Load any model file for inference behind one interface: a training checkpoint (model_last.pt /
model_best.pt), an exported model.safetensors + model_card.json (pickle-free), or an exported model.onnx.

Every kind yields a LoadedModel whose `logits(images)` takes a normalised float32 batch, with the InputSpec
that says how to make one. Bad files are one-line errors: corrupt weights, a card that does not fit them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from richkd.data.fashion_mnist import PAD as FASHION_MNIST_PAD
from richkd.data.stats import DATASET_STATS
from richkd.engine.io import file_sha256
from richkd.errors import RichKDError
from richkd.export.card import CARD_NAME, RunInfo, card_spec, check_card, read_card, read_run
from richkd.export.images import InputSpec

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "richkd-exported-weights"
NATIVE_SIZE = {"cifar10": (32, 32), "cifar100": (32, 32), "fashion_mnist": (32, 32)}


@dataclass(frozen=True)
class LoadedModel:
    """A ready classifier: `logits` maps a normalised float32 [B, 3, H, W] batch to [B, C] logits."""

    arch: str
    classes: tuple[str, ...]
    spec: InputSpec
    logits: Callable[[Tensor], Tensor]
    runtime: str  # "pytorch" | "onnxruntime"
    path: Path
    module: nn.Module | None = None  # the PyTorch model, eval mode (None for ONNX)
    card: dict[str, Any] | None = None  # the model card of an exported model
    run: RunInfo = field(default_factory=RunInfo)  # the run directory of a training checkpoint


def load_model(
    path: Path, *, threads: int | None = None, device: torch.device | None = None, allow_code: bool = False
) -> LoadedModel:
    """Pick the loader by file type: .onnx -> ONNX Runtime, .safetensors -> exported, else a checkpoint.
    `allow_code`: the explicit opt-in to rebuild a `module:PKG.MOD:FACTORY` model by running that user code."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RichKDError(f"model file {path} not found: pass a model_last.pt, model.safetensors or model.onnx")
    if path.is_dir():
        for name in ("model.safetensors", "model_last.pt"):
            if (path / name).is_file():
                return load_model(path / name, threads=threads, device=device, allow_code=allow_code)
        raise RichKDError(f"{path} is a folder without model.safetensors or model_last.pt: pass the model file")
    if path.suffix == ".onnx":
        return load_onnx(path, threads=threads)
    if path.suffix == ".safetensors":
        return load_exported(path, device=device, allow_code=allow_code)
    return load_checkpoint(path, device=device, allow_code=allow_code)


def _torch_model(module: nn.Module, arch: str, classes: tuple[str, ...], spec: InputSpec, path: Path,
                 device: torch.device | None, **extra: Any) -> LoadedModel:
    module = module.to(device or torch.device("cpu")).eval()

    def logits(images: Tensor) -> Tensor:
        with torch.no_grad():
            out: Tensor = module(images.to(next(module.parameters()).device)).logits.float().cpu()
        return out

    return LoadedModel(arch, classes, spec, logits, "pytorch", path, module=module, **extra)


def load_checkpoint(path: Path, *, device: torch.device | None = None, allow_code: bool = False) -> LoadedModel:
    """A `richkd train` model file; how to feed it comes from the file, else from its run directory."""
    from richkd.engine.checkpoint import load_weights_strict, read_model_file
    from richkd.models import create_model

    state, info = read_model_file(path)
    if not info:
        raise RichKDError(
            f"{path} records no architecture or classes (not a richkd model file): use model_last.pt or "
            "model_best.pt of a richkd run"
        )
    arch, classes = str(info["arch"]), tuple(str(c) for c in info["classes"])
    run = read_run(path)
    spec = checkpoint_spec(path, info, run)
    model = create_model(arch, len(classes), allow_code=allow_code)
    load_weights_strict(model, state, source=path, arch=arch)
    return _torch_model(model, arch, classes, spec, path, device, run=run)


def checkpoint_spec(path: Path, info: dict[str, Any], run: RunInfo) -> InputSpec:
    """Normalisation and input size of a checkpoint. Model files written since the export feature carry
    them; for older ones they come from the run's config.yaml (known datasets) or its train split."""
    dataset = run.get("data.name")
    color, pad = ("grey", FASHION_MNIST_PAD) if dataset == "fashion_mnist" else ("rgb", 0)
    mean, std, size = info.get("mean"), info.get("std"), info.get("input_size")
    if (mean is None or size is None) and dataset in DATASET_STATS:
        mean, std = (mean, std) if mean is not None else DATASET_STATS[dataset]
        size = size if size is not None else NATIVE_SIZE[dataset]
    if (mean is None or size is None) and dataset == "imagefolder":
        mean, std, size = _imagefolder_stats(run)
    if mean is None or std is None or size is None:
        raise RichKDError(
            f"{path} does not record its input normalisation and no run config.yaml beside it says which "
            "dataset it was trained on: use a model file from its run directory (or one trained by this richkd)"
        )
    resize = str(run.get("data.resize") or "shorter") if dataset == "imagefolder" else "shorter"
    return InputSpec(size=(int(size[0]), int(size[1])), mean=tuple(mean), std=tuple(std), color=color, pad=pad,  # type: ignore[arg-type]
                     resize=resize)


def _imagefolder_stats(run: RunInfo) -> tuple[Any, Any, Any]:
    """An older image-folder checkpoint: its train split's stats, from the decoded cache (decoded if need be)."""
    from richkd.data import load_dataset
    from richkd.data.folder import folder_options

    root, cache_dir = run.get("data.root"), run.get("data.cache_dir")
    log.info("the checkpoint does not record its normalisation: reading the train split of %s", root)
    try:
        keys = ("image_size", "resize", "split_fraction", "split_seed", "skip_bad", "class_names")
        ds = load_dataset(
            "imagefolder", root, run.get("data.train_split") or "train",
            cache_dir=Path(cache_dir) if cache_dir else None,
            folder=folder_options({key: run.get(f"data.{key}") for key in keys}),
            test_split=run.get("data.test_split") or "test",
        )
    except RichKDError as err:
        raise RichKDError(
            f"the checkpoint predates recorded normalisation and its training data is unavailable ({err})"
        ) from None
    return ds.mean, ds.std, tuple(ds.images.shape[2:])


def load_exported(path: Path, *, device: torch.device | None = None, allow_code: bool = False) -> LoadedModel:
    """model.safetensors + the model_card.json beside it: no pickle, no training config, no dataset."""
    from safetensors import SafetensorError, safe_open

    from richkd.engine.checkpoint import load_weights_strict
    from richkd.models import create_model

    card_path = path.with_name(CARD_NAME)
    card = read_card(card_path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RichKDError(f"model file {path} is corrupt or not a safetensors file ({first[:120]})") from None
    recorded = (card.get("weights") or {}).get("sha256")
    if recorded and recorded != file_sha256(path):
        raise RichKDError(
            f"{path} does not match the sha256 in {card_path}: the weights were changed or replaced; re-export"
        )
    arch, classes = card["arch"], tuple(str(c) for c in card["classes"])
    if meta.get("arch", arch) != arch:
        raise RichKDError(f"{card_path} names {arch} but {path} holds a {meta['arch']}: re-export the model")
    model = create_model(arch, len(classes), allow_code=allow_code)
    check_class_count(model, state, path, card_path)
    load_weights_strict(model, state, source=path, arch=arch)
    return _torch_model(model, arch, classes, card_spec(card, str(card_path)), path, device, card=card)


def check_class_count(model: nn.Module, state: dict[str, Tensor], path: Path, card_path: Path) -> None:
    """The card's class count against the weights' classifier, named as such (every zoo model ends in one
    Linear layer: the last 2-D weight of its state dict), before the generic strict-load check."""
    key, own = [(k, v) for k, v in model.state_dict().items() if v.dim() == 2][-1]
    weight = state.get(key)
    if weight is not None and weight.dim() == 2 and weight.shape[0] != own.shape[0]:
        raise RichKDError(
            f"{card_path} lists {own.shape[0]} classes but the weights in {path} have {weight.shape[0]} outputs "
            f"({key}): the card does not belong to these weights; re-export"
        )


def load_onnx(path: Path, *, threads: int | None = None) -> LoadedModel:
    """model.onnx run by ONNX Runtime; its card is model_card.json beside it, else the copy embedded in it."""
    from richkd.export.onnx_export import embedded_card, open_session, output_classes, run_session

    session = open_session(path, threads=threads)
    card_path = path.with_name(CARD_NAME)
    if card_path.is_file():
        card, where = read_card(card_path), str(card_path)
    else:
        embedded, where = embedded_card(session), f"the card embedded in {path}"
        if embedded is None:
            raise RichKDError(f"{path} carries no richkd model card and {card_path} is missing: re-export it")
        check_card(embedded, where)
        card = embedded
    classes = tuple(str(c) for c in card["classes"])
    outputs = output_classes(session)
    if outputs is not None and outputs != len(classes):
        raise RichKDError(
            f"{where} lists {len(classes)} classes but {path} outputs {outputs} logits: "
            "the card does not belong to this model; re-export"
        )
    spec = card_spec(card, where)
    return LoadedModel(
        card["arch"], classes, spec, lambda x: run_session(session, x), "onnxruntime", path, card=card
    )

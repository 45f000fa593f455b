"""Training-state checkpoints and model weight files, with loud failures on anything that does not fit."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from richkd.engine.io import write_atomic
from richkd.errors import RichKDError

MODEL_FORMAT = "richkd-model-v1"


def _torch_save_atomic(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda fh: fh.write(buffer.getbuffer()))


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise RichKDError(f"{what} not found: {path}")
    from safetensors import SafetensorError  # torch.load hands a .safetensors file to safetensors

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError,
            SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RichKDError(f"{what} {path} is corrupt or not a PyTorch file ({first[:120]})") from None


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    _torch_save_atomic(path, state)


def load_training_state(path: Path) -> dict[str, Any]:
    state = _torch_load(path, "checkpoint")
    if not isinstance(state, dict) or "epoch" not in state or "student" not in state:
        raise RichKDError(f"checkpoint {path} is not a richkd training checkpoint")
    return state


def restore_training_state(module: nn.Module, state: dict[str, Any], *, path: Path, key: str, arch: str) -> None:
    """Load `state[key]` into `module` (student + distiller); a checkpoint of another student architecture (or
    another method's extra modules) is one line naming both, not load_state_dict's page of key names."""
    saved_arch = state.get("arch") or recorded_student(path.parent)
    if saved_arch is not None and saved_arch != arch:
        raise RichKDError(
            f"--resume: {path} holds a {saved_arch} student but the config names {arch}: resume with the run's own "
            "config.yaml, or start a new run in another out_dir"
        )
    try:
        module.load_state_dict(state[key])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RichKDError(
            f"--resume: {path} (a {saved_arch or 'student of unrecorded architecture'}) does not fit this run's "
            f"{arch} student and distiller ({first[:120]}): resume with the run's own config.yaml"
        ) from None


def recorded_student(run_dir: Path) -> str | None:
    """The student architecture a run recorded in its model_last.pt (None when there is none to read): what a
    --resume must match, checked before anything of the run is touched."""
    beside = run_dir / "model_last.pt"
    if not beside.is_file():
        return None
    try:
        _, info = read_model_file(beside)
    except RichKDError:
        return None
    arch = info.get("arch")
    return str(arch) if arch is not None else None


def save_model(
    path: Path,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    classes: tuple[str, ...],
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    input_size: tuple[int, int] | None = None,
) -> None:
    """Weights plus what is needed to rebuild and check them (architecture, class order) and, when given, to
    feed them (the training normalisation and input size): an image-folder run's stats exist nowhere else."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    record: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "arch": arch,
        "num_classes": num_classes,
        "classes": list(classes),
        "model": state,
    }
    for key, value in (("mean", mean), ("std", std), ("input_size", input_size)):
        if value is not None:
            record[key] = list(value)
    _torch_save_atomic(path, record)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (their state-dict keys carry prefixes)."""
    inner = getattr(model, "module", None)
    model = inner if isinstance(inner, nn.Module) else model
    orig = getattr(model, "_orig_mod", None)
    return orig if isinstance(orig, nn.Module) else model


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, info). Accepts our format, mdistiller/CRD checkpoints ({'model': sd}) and bare state dicts."""
    obj = _torch_load(path, "model checkpoint")
    info: dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        info = {k: obj[k] for k in ("arch", "num_classes", "classes", "mean", "std", "input_size") if k in obj}
        state = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]  # mdistiller / CRD teacher checkpoints
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise RichKDError(
            f"model checkpoint {path} holds no state dict (expected richkd, mdistiller or bare)"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, info


def load_weights_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: Path, arch: str) -> None:
    """Strict load: any missing/unexpected key or shape mismatch is an error (the RichKD fork used strict=False)."""
    own = model.state_dict()
    # Files saved before PyTorch 0.4.1 (torchvision's original ImageNet weights, which mdistiller loads) lack
    # BatchNorm's num_batches_tracked counter; it holds no weights, so the module's own value stands in.
    counter = ".num_batches_tracked"
    legacy_bn = {
        k: v
        for k, v in own.items()
        if k.endswith(counter) and k not in state and k.removesuffix(counter) + ".running_mean" in state
    }
    state = {**legacy_bn, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise RichKDError(
            f"checkpoint {source} does not fit model {arch}: "
            + "; ".join(parts)
            + " — check model.teacher and model.teacher_checkpoint"
        )
    model.load_state_dict(state, strict=True)


def load_model_file(
    path: Path, model: nn.Module, *, arch: str, num_classes: int, classes: tuple[str, ...] | None = None
) -> None:
    state, info = read_model_file(path)
    if info and info["arch"] != arch:
        raise RichKDError(f"checkpoint {path} holds a {info['arch']} but the config names {arch}")
    if info and info["num_classes"] != num_classes:
        raise RichKDError(
            f"checkpoint {path} was trained for {info['num_classes']} classes but the data has {num_classes}"
        )
    if info and classes is not None and tuple(info["classes"]) != tuple(classes):
        raise RichKDError(f"checkpoint {path} was trained with a different class order than the dataset")
    load_weights_strict(model, state, source=path, arch=arch)

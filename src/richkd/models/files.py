"""A model rebuilt from a richkd model file (a run's model_last.pt / model_best.pt): the architecture it records
(or the one named), its class count checked against the data, its weights loaded strictly. One function for every
command that reads such a file (eval, predict, robustness), so each takes `--arch` and `--allow-code` alike."""

from __future__ import annotations

from pathlib import Path

from richkd.engine.checkpoint import load_model_file, read_model_file
from richkd.errors import RichKDError
from richkd.models import create_model
from richkd.models.base import ZooModel


def model_from_file(
    path: str | Path, classes: tuple[str, ...], *, arch: str | None = None, allow_code: bool = False,
    arch_flag: str = "--arch", check_classes: bool = True,
) -> tuple[ZooModel, str]:
    """(model, architecture) of the model file at `path` for data with `classes`. `arch` overrides what the file
    records (needed for a bare state dict); `allow_code`: the opt-in that a `module:PKG.MOD:FACTORY` architecture
    may import and run user code; `arch_flag` names the option in the message when neither says it;
    `check_classes` False checks only the class count (a file whose recorded names are not the data's kind)."""
    file = Path(path).expanduser()
    _, info = read_model_file(file)
    resolved = arch or info.get("arch")
    if resolved is None:
        raise RichKDError(f"{file} does not record its architecture: pass {arch_flag}")
    model = create_model(str(resolved), len(classes), allow_code=allow_code)
    load_model_file(file, model, arch=str(resolved), num_classes=len(classes),
                    classes=classes if check_classes else None)
    return model, str(resolved)

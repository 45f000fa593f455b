"""Resolve `base:` layers (built-in `dataset:` / `method:` / `pair:` names or YAML files) into one raw config.

Merge rules: mappings merge key by key, later layers win, lists are replaced whole; a layer that names a different
`distill.method` replaces the whole `distill` section (the previous method's keys do not apply to the new one).
A `pair:` layer is applied after the other layers of its `base:` list, whatever its position, because what it
sets depends on them: the DKD β only when the method is DKD, the teacher as the trained model for `method:teacher`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from richkd.errors import RichKDError
from richkd.recipes.pairs import get_pair

__all__ = ["compose", "dataset_names", "method_names", "merge", "read_yaml"]

_HERE = Path(__file__).parent
_KINDS = ("dataset", "method", "pair")


def dataset_names() -> list[str]:
    return sorted(p.stem for p in (_HERE / "datasets").glob("*.yaml") if "." not in p.stem and p.stem != "reduced-cpu")


def method_names() -> list[str]:
    return sorted(p.stem for p in (_HERE / "methods").glob("*.yaml"))


def dataset_method_layers() -> dict[str, list[str]]:
    """{dataset: [methods]} whose `datasets/<dataset>.<method>.yaml` layer a dataset's own settings for the method
    (ImageNet's KD/DKD/CRD weights, AT/OFD batch sizes, ReviewKD warm-up), applied over the method's preset."""
    layers: dict[str, list[str]] = {}
    for path in sorted((_HERE / "datasets").glob("*.*.yaml")):
        dataset, method = path.stem.split(".", 1)
        if method != "teacher":
            layers.setdefault(dataset, []).append(method)
    return layers


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, with one-line errors for a missing, unparsable or non-mapping file."""
    if not path.is_file():
        raise RichKDError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RichKDError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise RichKDError(f"config file {path} is not UTF-8 text (is it a YAML file?)") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise RichKDError(f"config file {path} must hold a mapping at top level")
    return loaded or {}


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base` (see the module docstring); neither input is modified."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        old = out.get(key)
        switches_method = (
            key == "distill"
            and isinstance(old, Mapping)
            and isinstance(value, Mapping)
            and "method" in value
            and value["method"] != old.get("method")
        )
        if isinstance(old, Mapping) and isinstance(value, Mapping) and not switches_method:
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class _State:
    """Names seen so far (for the pair layer's paths) and the layers applied, in order (provenance)."""

    dataset: str | None = None
    method: str | None = None
    layers: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)


def compose(
    path: str | Path | None,
    *,
    dataset: str | None = None,
    pair: str | None = None,
    method: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """(raw config, layers applied) from the CLI's --dataset/--pair/--method and an optional YAML file on top."""
    if pair is not None and method is None:
        raise RichKDError("--pair needs --method (`richkd recipes` lists the methods)")
    state = _State()
    refs = [f"{kind}:{name}" for kind, name in zip(_KINDS, (dataset, method, pair), strict=True) if name]
    if refs and path is None and dataset is None:
        refs.insert(0, "dataset:cifar100")  # the pairs are CIFAR-100's; the reference recipe
    raw = _apply_bases(refs, Path.cwd(), state) if refs else {}
    if path is not None:
        raw = merge(raw, _file_layer(Path(path), state, label=str(path)))
    return raw, state.layers


def _apply_bases(refs: Sequence[Any], folder: Path, state: _State) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    pairs: list[str] = []
    for ref in refs:
        if not isinstance(ref, str) or not ref:
            raise RichKDError(f"invalid base entry {ref!r}: expected dataset:NAME, method:NAME, pair:NAME or a file")
        kind, sep, name = ref.partition(":")
        if sep and kind == "pair":
            pairs.append(name)
        elif sep and kind in _KINDS:
            merged = merge(merged, _builtin(kind, name, state))
        else:
            merged = merge(merged, _file_layer(folder / ref, state, label=ref))
    for name in pairs:
        merged = merge(merged, _pair_layer(name, merged, state))
    return merged


def _builtin(kind: str, name: str, state: _State) -> dict[str, Any]:
    folder = _HERE / f"{kind}s"
    names = dataset_names() if kind == "dataset" else method_names()
    if name not in names:
        raise RichKDError(f"unknown {kind} {name!r}; choose one of {', '.join(names)}")
    layer = _file_layer(folder / f"{name}.yaml", state, label=f"{kind}:{name}")
    if kind == "dataset":  # set after the file's own bases: the outermost name is the one that counts
        state.dataset = name
    else:
        state.method = name
        # datasets/<dataset>.<method>.yaml: a dataset's own weights for a method (ImageNet's KD/DKD/CRD differ
        # from CIFAR's), over the method's; <dataset>.teacher.yaml is the pair layer's (a teacher needs a pair)
        tuned = _HERE / "datasets" / f"{state.dataset}.{name}.yaml"
        if state.dataset and name != "teacher" and tuned.is_file():
            layer = merge(layer, _file_layer(tuned, state, label=f"dataset:{state.dataset}.{name}"))
    return layer


def _file_layer(path: Path, state: _State, *, label: str) -> dict[str, Any]:
    key = str(path.resolve())
    if key in state.stack:
        raise RichKDError(f"config layers include each other in a circle: {' -> '.join([*state.stack, key])}")
    state.stack.append(key)
    data = read_yaml(path)
    bases = data.pop("base", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        raise RichKDError(f"{path}: `base` must be a list of layers (dataset:NAME, method:NAME, pair:NAME, files)")
    merged = merge(_apply_bases(bases, path.parent, state), data)
    state.stack.pop()
    state.layers.append(label)
    return merged


def _pair_layer(name: str, merged: Mapping[str, Any], state: _State) -> dict[str, Any]:
    """Models, teacher checkpoint, student lr, DKD β and out_dir of a pair (or of one model, for teacher/vanilla)."""
    runs = f"runs/{state.dataset}" if state.dataset else "runs"
    method = state.method
    if method in ("teacher", "vanilla") and "-" not in name:
        teacher = student = name.lower()  # one model trained on labels, e.g. --pair vgg13 --method teacher
        lr = None
    else:
        pair = get_pair(name, state.dataset)
        teacher, student, lr = pair.teacher, pair.student, pair.lr
    layer: dict[str, Any] = {}
    if method == "teacher":
        layer["model"] = {"student": teacher, "teacher": None, "teacher_checkpoint": None}
        layer["out_dir"] = f"{runs}/teacher_{teacher}"
        extra = _HERE / "datasets" / f"{state.dataset}.teacher.yaml"
        if state.dataset and extra.is_file():
            layer = merge(layer, _file_layer(extra, state, label=f"dataset:{state.dataset}.teacher"))
    elif method == "vanilla":
        layer["model"] = {"student": student}
        layer["out_dir"] = f"{runs}/vanilla_{student}"
    else:
        layer["model"] = {
            "student": student,
            "teacher": teacher,
            "teacher_checkpoint": pair.teacher_checkpoint or f"{runs}/teacher_{teacher}/model_last.pt",
        }
        layer["out_dir"] = f"{runs}/{method or 'run'}_{teacher}_{student}"
        distill = merged.get("distill")
        if isinstance(distill, Mapping) and distill.get("method") == "dkd":
            layer["distill"] = {"beta": pair.dkd_beta}
        if method is not None and method in pair.method_overrides:  # e.g. ImageNet r50->mv1's ReviewKD weight
            layer = merge(layer, dict(pair.method_overrides[method]))
    if lr is not None and method != "teacher":
        layer["optim"] = {"lr": lr}
    state.layers.append(f"pair:{name}")
    return layer

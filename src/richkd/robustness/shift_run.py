"""`richkd shift`'s work: ImageNet model files (and a vision-language teacher's zero-shot predictor) scored on
the streamed distribution-shift sets (ImageNet-V2, -Sketch, -R, -A; layouts in `richkd.robustness.shift`) ->
OUT/shift.json and OUT/shift.md.

Separate from `richkd.robustness.run` (in-memory splits of a `--dataset`: CIFAR-C and small shift folders of the
same class list): these are 224-px evaluations streamed from folders, with their own label layouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from richkd.engine.io import file_sha256
from richkd.errors import RichKDError
from richkd.models.base import ZooModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShiftOptions:
    """How the sets are read and the predictors built (the options of `richkd shift`, same names and defaults)."""

    classes: str | None = None  # the head's wnids: a file or wnid,wnid,... (None: recorded, else ImageNet-1k)
    teacher: str | None = None  # also score this vision-language teacher zero-shot
    weights: str | None = None
    templates: str = "imagenet80"
    class_names: str = "clip"
    image_size: int = 224
    resize_size: int = 256
    batch_size: int = 128
    workers: int = 0


def _head_classes(spec: str | None, infos: Mapping[str, dict[str, Any]]) -> tuple[tuple[str, ...], bool]:
    """(the head's wnids, whether checkpoints' recorded class lists can be checked against them)."""
    from richkd.teachers.imagenet_names import imagenet_wnids, read_class_list

    if spec is not None:
        return read_class_list(spec), True
    known = set(imagenet_wnids())
    for info in infos.values():
        recorded = tuple(info.get("classes") or ())
        if recorded and all(c in known for c in recorded):
            return recorded, True
    return imagenet_wnids(), False


def _load_checkpoints(
    paths: Mapping[str, str | Path], archs: Mapping[str, str], classes_spec: str | None, device: torch.device,
    allow_code: bool,
) -> tuple[dict[str, ZooModel], dict[str, dict[str, str]], tuple[str, ...]]:
    from richkd.data.stream import IMAGENET_MEAN, IMAGENET_STD
    from richkd.engine.checkpoint import read_model_file
    from richkd.models.files import model_from_file

    infos = {name: read_model_file(Path(p).expanduser())[1] for name, p in paths.items()}
    classes, checkable = _head_classes(classes_spec, infos)
    models: dict[str, ZooModel] = {}
    described: dict[str, dict[str, str]] = {}
    for name, raw in paths.items():
        path, info = Path(raw).expanduser(), infos[name]
        for key, want in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
            if key in info and max(abs(a - b) for a, b in zip(info[key], want, strict=True)) > 1e-3:
                raise RichKDError(f"{path} was trained with {key} {info[key]}, not ImageNet's: it is no ImageNet model")
        model, arch = model_from_file(path, classes, arch=archs.get(name), allow_code=allow_code,
                                      arch_flag=f"--arch {name}=ARCH", check_classes=checkable)
        models[name] = model.to(device).eval()
        described[name] = {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "arch": arch}
    return models, described, classes


def _model_batches(source: Any, opts: ShiftOptions, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    from richkd.data.stream import StreamDataset, build_stream_loader

    data = StreamDataset(source, train=False, image_size=opts.image_size, resize_size=opts.resize_size)
    for images, labels, _ in build_stream_loader(data, batch_size=opts.batch_size, workers=opts.workers):
        yield images.to(device), labels


def _vlm_batches(source: Any, vlm: Any, opts: ShiftOptions, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    from torch.utils.data import DataLoader

    from richkd.caches.stream import RangeChunks

    spec = vlm.image_spec
    chunks = RangeChunks(source, 0, len(source), opts.batch_size, spec.size, spec.interpolation)
    loader: DataLoader[tuple[int, Tensor]] = DataLoader(chunks, batch_size=None, num_workers=opts.workers)
    labels = torch.from_numpy(source.labels).long()
    for start, images in loader:
        yield images.to(device).float() / 255.0, labels[start : start + len(images)]


def _teacher_predictor(opts: ShiftOptions, classes: tuple[str, ...], device: torch.device) -> tuple[
        Any, Callable[[Tensor], Tensor]]:
    from richkd.teachers.imagenet_names import resolve_templates, wnid_to_name
    from richkd.teachers.vlm import load_vlm
    from richkd.teachers.zero_shot import class_embeddings, zero_shot_logits

    assert opts.teacher is not None
    vlm = load_vlm(opts.teacher, device=device, weights=opts.weights)
    names = wnid_to_name(opts.class_names)
    class_emb = class_embeddings(vlm, [names[c] for c in classes], resolve_templates(opts.templates),
                                 clean_names=True).to(device)  # [C, E]
    return vlm, lambda x: zero_shot_logits(vlm.encode_images(x), class_emb, vlm.logit_scale)


def _logits_of(model: ZooModel) -> Callable[[Tensor], Tensor]:
    def predict(images: Tensor) -> Tensor:
        return model(images).logits

    return predict


def render_markdown(result: dict[str, Any]) -> str:
    """shift.md: one row per set, one top-1 column per predictor."""
    names = list(result["predictors"])
    lines = ["| set | layout | images | classes scored | " + " | ".join(f"{n} top-1 %" for n in names) + " |",
             "|---|---|---:|---:|" + "---:|" * len(names)]
    for set_name, s in result["sets"].items():
        accs = " | ".join(f"{s['results'][n]['top1']:.2f}" for n in names)
        lines.append(f"| {set_name} | {s['layout']} | {s['images']} | {s['classes_scored']} | {accs} |")
    return "\n".join(lines) + "\n"


def run_shift(
    sets: Mapping[str, str | Path], out: str | Path, *, checkpoints: Mapping[str, str | Path] | None = None,
    archs: Mapping[str, str] | None = None, layouts: Mapping[str, str] | None = None,
    options: ShiftOptions | None = None, device: torch.device | None = None, allow_code: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 of every predictor on every set; writes OUT/shift.json and OUT/shift.md atomically, returns
    the JSON's content. Every input is checked (and every model loaded) before any set is read."""
    from richkd.data.stream import FolderSource
    from richkd.engine.io import check_writable, write_json_atomic, write_text_atomic
    from richkd.robustness.shift import detect_layout, evaluate_predictors

    options, device = options or ShiftOptions(), device or torch.device("cpu")
    folder = Path(out)
    check_writable(folder, "--out")
    checkpoints, archs, layouts = dict(checkpoints or {}), dict(archs or {}), dict(layouts or {})
    if not checkpoints and options.teacher is None:
        raise RichKDError("nothing to evaluate: pass --checkpoint NAME=PATH and/or --teacher")
    for name in layouts.keys() - sets.keys():
        raise RichKDError(f"--layout {name}=... names no --set")
    models, described, classes = _load_checkpoints(checkpoints, archs, options.classes, device, allow_code)
    predictors = {name: _logits_of(model) for name, model in models.items()}
    vlm = None
    if options.teacher is not None:
        vlm, zero_shot = _teacher_predictor(options, classes, device)
        described["teacher"] = {"teacher": vlm.label, "model_id": vlm.model_id, "templates": options.templates}
    start = time.perf_counter()
    result: dict[str, Any] = {"predictors": described, "head_classes": len(classes), "sets": {}}
    for set_name, root in sets.items():
        source = FolderSource(root)
        layout = detect_layout(source.classes, classes, layout=layouts.get(set_name, "auto"),
                               root=str(root))
        target_map = layout.target_map(source.classes)
        results = (evaluate_predictors(_model_batches(source, options, device), predictors, layout, target_map)
                   if predictors else {})
        if vlm is not None:
            results |= evaluate_predictors(_vlm_batches(source, vlm, options, device), {"teacher": zero_shot},
                                           layout, target_map)
        result["sets"][set_name] = {"root": str(root), "layout": layout.name, "images": len(source),
                                    "classes_scored": len(layout.columns), "results": results}
        log.info("%s (%s): %s", set_name, layout.name, results)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "shift.json", result)
    write_text_atomic(folder / "shift.md", render_markdown(result))
    return result

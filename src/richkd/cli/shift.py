"""`richkd shift`: top-1/top-5 of ImageNet checkpoints (and a vision-language teacher's zero-shot predictor) on the
distribution-shift sets ImageNet-V2, -Sketch, -R and -A -> DIR/shift.json and DIR/shift.md.

A command of its own, not an option of `richkd robustness`: that one evaluates in-memory splits of a `--dataset`
(CIFAR-C, small shift folders of the same class list); these sets are streamed 224-px evaluations with their own
label layouts (index folders, 200-class subsets of a 1000-class head). Thin: parse, load, call
`richkd.robustness.shift`, write. RichKDError propagates to `richkd.cli.app.main` (one line).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from richkd.cli.args import count_int, image_size_int, threads_int, workers_int
from richkd.cli.vlm import TEACHER_HELP
from richkd.engine.io import file_sha256, parse_named
from richkd.errors import RichKDError

if TYPE_CHECKING:
    from richkd.models.base import ZooModel

log = logging.getLogger(__name__)


def add_shift_parser(subparsers: Any) -> None:
    """Register `richkd shift` on the main CLI's subparsers."""
    p = subparsers.add_parser("shift", help="accuracy on ImageNet-V2, -Sketch, -R and -A (200-class subsets mapped)")
    p.add_argument("--set", action="append", required=True, metavar="NAME=FOLDER",
                   help="a shift set's root (class folders: 0..999, or wnids); repeatable")
    p.add_argument("--layout", action="append", default=[], metavar="NAME=LAYOUT",
                   help="force a set's layout: imagenet-v2 | imagenet-sketch | imagenet-r | imagenet-a | subset "
                   "(default: recognised from the folder names)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="model file; repeatable")
    p.add_argument("--arch", action="append", default=[], metavar="NAME=ARCH",
                   help="architecture of a checkpoint that does not record it (torchvision/mdistiller files)")
    p.add_argument("--classes", default=None,
                   help="the head's wnids in order: a file or wnid,wnid,... (default: the checkpoint's recorded "
                   "class list if it holds wnids, else the packaged ImageNet-1k order)")
    p.add_argument("--teacher", default=None, help=f"also score this teacher zero-shot: {TEACHER_HELP}")
    p.add_argument("--weights", default=None, help="open_clip: local checkpoint file or pretrained tag")
    p.add_argument("--templates", default="imagenet80", help="richkd12 | imagenet80 | a template file")
    p.add_argument("--class-names", default="clip", choices=("torchvision", "clip"),
                   help="wording of the class names in the teacher's prompts")
    p.add_argument("--image-size", type=image_size_int, default=224, help="checkpoints' centre crop")
    p.add_argument("--resize-size", type=image_size_int, default=256,
                   help="checkpoints' short-side resize before the crop")
    p.add_argument("--batch-size", type=count_int, default=128)
    p.add_argument("--workers", type=workers_int, default=0, help="decode worker processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=threads_int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output folder for shift.json and shift.md")
    p.set_defaults(func=cmd_shift, interrupt_hint="nothing was written")


def _head_classes(spec: str | None, infos: dict[str, dict[str, Any]]) -> tuple[tuple[str, ...], bool]:
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


def _load_checkpoints(args: argparse.Namespace, device: torch.device) -> tuple[
        dict[str, ZooModel], dict[str, dict[str, str]], tuple[str, ...]]:
    from richkd.data.stream import IMAGENET_MEAN, IMAGENET_STD
    from richkd.engine.checkpoint import load_model_file, read_model_file
    from richkd.models import create_model

    paths = parse_named(args.checkpoint, "--checkpoint", "PATH")
    archs = parse_named(args.arch, "--arch", "ARCH")
    infos = {name: read_model_file(Path(p).expanduser())[1] for name, p in paths.items()}
    classes, checkable = _head_classes(args.classes, infos)
    models: dict[str, ZooModel] = {}
    described: dict[str, dict[str, str]] = {}
    for name, raw in paths.items():
        path, info = Path(raw).expanduser(), infos[name]
        arch = archs.get(name) or info.get("arch")
        if arch is None:
            raise RichKDError(f"{path} does not record its architecture: pass --arch {name}=ARCH")
        for key, want in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
            if key in info and max(abs(a - b) for a, b in zip(info[key], want, strict=True)) > 1e-3:
                raise RichKDError(f"{path} was trained with {key} {info[key]}, not ImageNet's: it is no ImageNet model")
        model = create_model(arch, len(classes))
        load_model_file(path, model, arch=arch, num_classes=len(classes), classes=classes if checkable else None)
        models[name] = model.to(device).eval()
        described[name] = {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "arch": arch}
    return models, described, classes


def _model_batches(source: Any, args: argparse.Namespace, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    from richkd.data.stream import StreamDataset, build_stream_loader

    data = StreamDataset(source, train=False, image_size=args.image_size, resize_size=args.resize_size)
    for images, labels, _ in build_stream_loader(data, batch_size=args.batch_size, workers=args.workers):
        yield images.to(device), labels


def _vlm_batches(source: Any, vlm: Any, args: argparse.Namespace, device: torch.device) -> Iterator[
        tuple[Tensor, Tensor]]:
    from torch.utils.data import DataLoader

    from richkd.caches.stream import RangeChunks

    spec = vlm.image_spec
    chunks = RangeChunks(source, 0, len(source), args.batch_size, spec.size, spec.interpolation)
    loader: DataLoader[tuple[int, Tensor]] = DataLoader(chunks, batch_size=None, num_workers=args.workers)
    labels = torch.from_numpy(source.labels).long()
    for start, images in loader:
        yield images.to(device).float() / 255.0, labels[start : start + len(images)]


def _teacher_predictor(args: argparse.Namespace, classes: tuple[str, ...], device: torch.device) -> tuple[
        Any, Callable[[Tensor], Tensor]]:
    from richkd.teachers.imagenet_names import resolve_templates, wnid_to_name
    from richkd.teachers.vlm import load_vlm
    from richkd.teachers.zero_shot import class_embeddings, zero_shot_logits

    vlm = load_vlm(args.teacher, device=device, weights=args.weights)
    names = wnid_to_name(args.class_names)
    class_emb = class_embeddings(vlm, [names[c] for c in classes], resolve_templates(args.templates),
                                 clean_names=True).to(device)  # [C, E]
    return vlm, lambda x: zero_shot_logits(vlm.encode_images(x), class_emb, vlm.logit_scale)


def _logits_of(model: ZooModel) -> Callable[[Tensor], Tensor]:
    def predict(images: Tensor) -> Tensor:
        return model(images).logits

    return predict


def render_markdown(result: dict[str, Any]) -> str:
    names = list(result["predictors"])
    lines = ["| set | layout | images | classes scored | " + " | ".join(f"{n} top-1 %" for n in names) + " |",
             "|---|---|---:|---:|" + "---:|" * len(names)]
    for set_name, s in result["sets"].items():
        accs = " | ".join(f"{s['results'][n]['top1']:.2f}" for n in names)
        lines.append(f"| {set_name} | {s['layout']} | {s['images']} | {s['classes_scored']} | {accs} |")
    return "\n".join(lines) + "\n"


def cmd_shift(args: argparse.Namespace) -> int:
    from richkd.data.stream import FolderSource
    from richkd.engine.device import check_device
    from richkd.engine.io import check_writable, write_json_atomic, write_text_atomic
    from richkd.robustness.shift import detect_layout, evaluate_predictors

    out = Path(args.out)
    check_writable(out, "--out")
    if not args.checkpoint and args.teacher is None:
        raise RichKDError("nothing to evaluate: pass --checkpoint NAME=PATH and/or --teacher")
    device = check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sets = parse_named(args.set, "--set", "FOLDER")
    layouts = parse_named(args.layout, "--layout", "LAYOUT")
    for name in layouts.keys() - sets.keys():
        raise RichKDError(f"--layout {name}=... names no --set")
    models, described, classes = _load_checkpoints(args, device)
    predictors = {name: _logits_of(model) for name, model in models.items()}
    vlm = None
    if args.teacher is not None:
        vlm, zero_shot = _teacher_predictor(args, classes, device)
        described["teacher"] = {"teacher": vlm.label, "model_id": vlm.model_id, "templates": args.templates}
    start = time.perf_counter()
    result: dict[str, Any] = {"predictors": described, "head_classes": len(classes), "sets": {}}
    for set_name, root in sets.items():
        source = FolderSource(root)
        layout = detect_layout(source.classes, classes, layout=layouts.get(set_name, "auto"), root=root)
        target_map = layout.target_map(source.classes)
        results = (evaluate_predictors(_model_batches(source, args, device), predictors, layout, target_map)
                   if predictors else {})
        if vlm is not None:
            results |= evaluate_predictors(_vlm_batches(source, vlm, args, device), {"teacher": zero_shot}, layout,
                                           target_map)
        result["sets"][set_name] = {"root": str(root), "layout": layout.name, "images": len(source),
                                    "classes_scored": len(layout.columns), "results": results}
        log.info("%s (%s): %s", set_name, layout.name, results)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "shift.json", result)
    table = render_markdown(result)
    write_text_atomic(out / "shift.md", table)
    print(table, end="")
    return 0

"""Predictions, analyses and robustness: the library calls behind `richkd predict`, `analyze`, `vlm zeroshot`,
`vlm fit-scale` and `robustness`, returning values (and writing the files those commands write)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from richkd.analysis.analyze_files import AnalysisResult
    from richkd.analysis.predict import PredictResult
    from richkd.data import FolderOptions

__all__ = ["analyze", "corrupt", "fit_logit_scale", "measure_robustness", "measure_shift", "predict", "zero_shot"]


def predict(
    *, dataset: str, out: str | Path, checkpoint: str | Path | None = None, arch: str | None = None,
    kind: str | None = None, vlm: str | None = None, vlm_weights: str | None = None, templates: str | None = None,
    clean_names: bool = True, cache: str | Path | None = None, alpha: float | None = None, no_vlm: bool = False,
    vlm_scale: float | None = None, root: str | None = None, split: str = "test", limit: int | None = None,
    features: bool = False, name: str | None = None, batch_size: int = 256, bf16: bool = False, device: str = "cpu",
    folder: FolderOptions | None = None, allow_code: bool = False,
) -> PredictResult:
    """One predictor's logits on `dataset/split` written to `out` (a predictions file, for `analyze`).

    The predictor: `checkpoint` (a model file; kind="teacher" labels a teacher), `vlm` (zero-shot), `cache` (a
    target cache; needs `vlm_scale`), `checkpoint` + `cache`/`vlm` + `alpha` (the fused teacher α·z_T + (1 − α)·s·z_C)
    or `checkpoint` + `alpha` + `no_vlm` (the control α·z_T). `name` defaults to `out`'s name without .preds...
    `allow_code`: the opt-in that a checkpoint of a `module:PKG.MOD:FACTORY` model may import and run user code.
    """
    from richkd.analysis.predict import PredictOptions, predict_to_file

    def text(value: str | Path | None) -> str | None:
        return None if value is None else str(value)

    return predict_to_file(PredictOptions(
        dataset=dataset, out=str(out), checkpoint=text(checkpoint), arch=arch, kind=kind, vlm=vlm,
        vlm_weights=vlm_weights, templates=templates, clean_names=clean_names, cache=text(cache), alpha=alpha,
        no_vlm=no_vlm, vlm_scale=vlm_scale, root=root, split=split, limit=limit, features=features, name=name,
        batch_size=batch_size, bf16=bf16, device=device, folder=folder, allow_code=allow_code,
    ))


def analyze(
    predictions: Sequence[str | Path], out: str | Path, *, names: Sequence[str] | None = None, tau: float = 0.5,
    n_bins: int = 15, flows: Sequence[tuple[str, str]] = (), agreements: Sequence[tuple[str, str]] = (),
    semantic: str | None = None, templates: str | None = None, reference: str | None = None, device: str = "cpu",
) -> AnalysisResult:
    """Calibration, confidence quadrants (threshold `tau`), flows FROM->TO, agreement REF/OTHER and class-name
    consistency (`semantic`: "vlm:SPEC" or "cache:DIR") of predictions files; writes OUT/analysis.json and .md.
    With predictors named teacher and fused, the flow teacher->fused is added; "teacher" is the default reference."""
    from richkd.analysis.analyze_files import analyze_files

    return analyze_files(predictions, out, names=names, tau=tau, n_bins=n_bins, flows=flows, agreements=agreements,
                         semantic=semantic, templates=templates, reference=reference, device=device)


def zero_shot(
    *, dataset: str, teacher: str = "surrogate", root: str | None = None, split: str = "test",
    limit: int | None = None, weights: str | None = None, templates: str | None = None, clean_names: bool = True,
    scales: Sequence[float] | None = None, batch_size: int = 256, device: str = "cpu", bf16: bool | None = None,
    download: bool = False, folder: FolderOptions | None = None,
) -> dict[str, Any]:
    """A vision-language teacher's zero-shot top-1/top-5, NLL and ECE on `dataset/split`, with its prompt
    ensemble and a single prompt, at each logit scale (default: 1 and the model's own)."""
    from richkd.data import load_dataset
    from richkd.data.subset import limited
    from richkd.engine.device import bf16_is_fast, check_device
    from richkd.teachers.imagenet_names import resolve_templates
    from richkd.teachers.vlm import load_vlm
    from richkd.teachers.zero_shot_eval import zero_shot_results

    use_bf16 = bf16_is_fast(check_device(device)) if bf16 is None else bf16
    ds, subset = limited(load_dataset(dataset, root, split, download=download, folder=folder), limit)
    prompts = resolve_templates(templates)
    model = load_vlm(teacher, device=device, weights=weights)
    return zero_shot_results(model, ds, templates=prompts, subset=subset, scales=scales, clean_names=clean_names,
                             batch_size=batch_size, device=device, bf16=use_bf16)


def fit_logit_scale(
    cache: str | Path, *, dataset: str, root: str | None = None, split: str = "train", limit: int | None = None,
    all_views: bool = False, download: bool = False, folder: FolderOptions | None = None,
) -> dict[str, Any]:
    """The logit scale s minimising the NLL of a target cache's cosines on its rows (`result["logit_scale"]`):
    the s a cache-only predictor (`predict(cache=..., vlm_scale=s)`) needs."""
    from richkd.caches.fit_scale import fit_cache_logit_scale

    return fit_cache_logit_scale(cache, dataset=dataset, root=root, split=split, download=download, limit=limit,
                                 all_views=all_views, folder=folder)


def measure_robustness(
    checkpoints: Mapping[str, str | Path], out: str | Path, *, dataset: str, root: str | None = None,
    split: str = "test", limit: int | None = None, archs: Mapping[str, str] | None = None,
    corruptions: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
    official_c: str | None = None, shifts: Mapping[str, str] | None = None, seed: int = 0, batch_size: int = 512,
    device: str = "cpu", progress: bool = False, folder: FolderOptions | None = None, allow_code: bool = False,
) -> dict[str, Any]:
    """Accuracy of model files (NAME -> path) under CIFAR-C corruptions (generated, or the official files in
    `official_c`) and on shift folders (NAME -> folder); writes OUT/robustness.json and .md, returns the JSON.
    `allow_code`: the opt-in that a `module:PKG.MOD:FACTORY` model may import and run user code."""
    from richkd.robustness.run import run_robustness

    return run_robustness(checkpoints, out, dataset=dataset, root=root, split=split, limit=limit, archs=archs,
                          corruptions=corruptions, severities=severities, official_c=official_c, shifts=shifts,
                          seed=seed, batch_size=batch_size, device=device, progress=progress, folder=folder,
                          allow_code=allow_code)


def measure_shift(
    sets: Mapping[str, str | Path], out: str | Path, *, checkpoints: Mapping[str, str | Path] | None = None,
    archs: Mapping[str, str] | None = None, layouts: Mapping[str, str] | None = None, classes: str | None = None,
    teacher: str | None = None, weights: str | None = None, templates: str = "imagenet80", class_names: str = "clip",
    image_size: int = 224, resize_size: int = 256, batch_size: int = 128, workers: int = 0, device: str = "cpu",
    allow_code: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 of ImageNet model files (NAME -> path) and optionally a vision-language `teacher`'s zero-shot
    predictor on distribution-shift sets (NAME -> folder: ImageNet-V2, -Sketch, -R, -A, recognised from their
    folder names or forced by `layouts`); writes OUT/shift.json and OUT/shift.md, returns the JSON. `classes`: the
    head's wnids (a file or wnid,wnid,...; default: a checkpoint's recorded list, else ImageNet-1k's order)."""
    from richkd.engine.device import check_device
    from richkd.robustness.shift_run import ShiftOptions, run_shift

    options = ShiftOptions(classes=classes, teacher=teacher, weights=weights, templates=templates,
                           class_names=class_names, image_size=image_size, resize_size=resize_size,
                           batch_size=batch_size, workers=workers)
    return run_shift(sets, out, checkpoints=checkpoints, archs=archs, layouts=layouts, options=options,
                     device=check_device(device), allow_code=allow_code)


def corrupt(images: Tensor, name: str, severity: int, *, seed: int = 0, rows: Tensor | None = None) -> Tensor:
    """uint8 [N, 3, H, W] images under CIFAR-C corruption `name` at `severity` 1-5 (deterministic per seed and
    row id; `rows`: the images' row ids in their dataset)."""
    from richkd.robustness.corruptions import corrupt as apply

    return apply(images, name, severity, seed=seed, rows=rows)

"""Shared pieces of the speed benchmarks: a synthetic CIFAR-100-sized split, a synthetic vision-language target
cache in the real on-disk format, and the RichKD-L+F training pipeline built from the library's own parts.

Pixel values and targets are random: the cost of a training step does not depend on them.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from richkd.caches import chunked
from richkd.caches.build_teacher import build_teacher_cache, plan_teacher_cache
from richkd.caches.target import TargetCache, write_random_cache
from richkd.caches.teacher import TeacherCache, array_shapes
from richkd.data.arrays import ArrayDataset
from richkd.data.batch import Batch
from richkd.data.subset import limited
from richkd.distill import RichKD, build_crd_loss
from richkd.engine.fold import fold_batchnorm
from richkd.engine.optim import build_optimizer
from richkd.engine.trainer import StepModule
from richkd.models import create_model
from richkd.teachers.frozen import FusedTargets, OnlineTeacher

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def synthetic_split(n_rows: int, n_classes: int = 100, *, seed: int = 0, split: str = "train") -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(
        images=torch.randint(0, 256, (n_rows, 3, 32, 32), generator=g, dtype=torch.uint8),
        labels=torch.randint(0, n_classes, (n_rows,), generator=g),
        classes=tuple(f"class{i}" for i in range(n_classes)),
        name="synthetic",
        split=split,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        source="synthetic",
    )


def synthetic_cache(path: Path, ds: ArrayDataset, embed_dim: int = 768) -> TargetCache:
    """A one-view cache of random unit embeddings (ViT-L/14 width by default), opened and validated."""
    write_random_cache(
        path,
        dataset=ds.name,
        split=ds.split,
        n_rows=len(ds),
        class_names=ds.classes,
        embed_dim=embed_dim,
        label="random (benchmark) — not CLIP",
    )
    cache = TargetCache.open(path)
    cache.validate(dataset=ds.name, split=ds.split, n_rows=len(ds), class_names=ds.classes)
    return cache


@dataclass
class Pipeline:
    """One RichKD-L+F training setup: StepModule(student, distiller), fused targets, optimizer."""

    student: nn.Module
    distiller: RichKD
    step_module: nn.Module
    targets: FusedTargets
    optimizer: torch.optim.Optimizer


def random_teacher_cache(path: Path, ds: ArrayDataset, arch: str, feature_dim: int) -> TeacherCache:
    """A teacher cache of the real format filled with random float16 values (speed only), written in row blocks."""
    meta = plan_teacher_cache(ds, arch=arch, checkpoint_sha256="0" * 64, feature_dim=feature_dim, pad=4, bf16=False,
                              subset=None)
    path.mkdir(parents=True)
    spec = {name: ("float16", shape) for name, shape in array_shapes(meta).items()}
    arrays = chunked.open_memmaps(path, spec, fresh=True)
    rng = np.random.default_rng(0)
    for arr in arrays.values():
        for start in range(0, meta.n_rows, 1000):
            block = arr[start : start + 1000]
            block[:] = rng.standard_normal(block.shape, dtype=np.float32).astype(np.float16)
        arr.flush()
    del arrays
    chunked.finish(path, meta.to_json())
    return TeacherCache.open(path)


def _feature_dim(model: nn.Module) -> int:
    """Width of a zoo model's pooled features (typed: `nn.Module` attributes read as Tensor | Module)."""
    dim = model.feature_dim
    assert isinstance(dim, int), f"{type(model).__name__} is not a zoo model"
    return dim


def build_cost(teacher: torch.nn.Module, ds: ArrayDataset, rows: int, arch: str, tmp: Path, bf16: bool) -> float:
    """Seconds per training image of building a real teacher cache (all views of `rows` rows)."""
    part, subset = limited(ds, rows)
    folded = fold_batchnorm(copy.deepcopy(teacher)).eval()
    meta = plan_teacher_cache(part, arch=arch, checkpoint_sha256="0" * 64, feature_dim=_feature_dim(teacher),
                              pad=4, bf16=bf16, subset=subset)
    t0 = time.perf_counter()
    build_teacher_cache(folded, part, tmp / "built", meta, batch_size=1024, progress=False, checkpoint_seconds=60)
    return (time.perf_counter() - t0) / len(part)


def build_pipeline(
    *,
    teacher: nn.Module,
    student: nn.Module,
    ds: ArrayDataset,
    cache: TargetCache,
    device: torch.device,
    channels_last: bool,
    nce_k: int = 16384,
    foreach: bool = True,
    fused: bool = False,
    compile: bool = False,
    fold_teacher: bool = True,
) -> Pipeline:
    """RichKD-L+F with the reference hyper-parameters (w_ce 1, w_kd 3, w_feat 0.8, T 3, alpha = lambda 0.7, K),
    set up as `richkd train` (build.py) sets it up for the same switches.

    `teacher` and `student` are deep-copied, so two pipelines built from the same modules start equal.
    `fold_teacher`: fold the frozen teacher's BatchNorm into its convolutions, as build.py does.
    """
    teacher = copy.deepcopy(teacher).to(device)
    if fold_teacher:
        teacher = fold_batchnorm(teacher)
    student = copy.deepcopy(student).to(device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        student = student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    crd = build_crd_loss(
        student_dim=_feature_dim(student),
        teacher_dim=_feature_dim(teacher),
        clip_dim=cache.meta.embed_dim,
        feature_lambda=0.7,
        embed_dim=128,
        n_data=len(ds),
        labels=ds.labels,
        nce_k=nce_k,
        nce_t=0.07,
        momentum=0.5,
    )
    distiller = RichKD(ce_weight=1.0, kd_weight=3.0, feat_weight=0.8, temperature=3.0, crd=crd).to(device)
    if compile:
        teacher = torch.compile(teacher)  # type: ignore[assignment]
        student = torch.compile(student)  # type: ignore[assignment]
    targets = FusedTargets(
        OnlineTeacher(teacher), cache, logit_alpha=0.7, vlm_logit_scale=1.0, use_vlm=True, row_map=None
    )
    params = [p for p in list(student.parameters()) + list(distiller.parameters()) if p.requires_grad]
    optimizer = build_optimizer(
        params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=False, foreach=foreach, fused=fused
    )
    return Pipeline(student, distiller, StepModule(student, distiller), targets, optimizer)


def parity_batch(ds: ArrayDataset, rows: int, device: torch.device) -> Batch:
    """The first `rows` rows, not augmented, normalised: the one batch every path's first-step loss is taken on
    (augmentation differs between the paths by design, so their own batches cannot be compared)."""
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    images = (ds.images[:rows].float() / 255.0 - mean) / std
    idx = torch.arange(rows)
    return Batch(images.to(device), ds.labels[:rows].to(device), idx.to(device), torch.zeros_like(idx).to(device))


def first_step_loss(pipe: Pipeline, batch: Batch, *, bf16: bool, channels_last: bool, seed: int = 0) -> float:
    """The loss a first training step of `pipe` computes on `batch` (same terms as `train_step`), taken on copies
    of the student and distiller so the timed run is untouched, with the global RNG (CRD's negatives) seeded
    and restored. The speed-up of one path over another only means something if these agree."""
    step_module = copy.deepcopy(pipe.step_module).train()
    if channels_last:
        batch = batch._replace(images=batch.images.contiguous(memory_format=torch.channels_last))
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        autocast = torch.autocast(device_type=batch.images.device.type, dtype=torch.bfloat16, enabled=bf16)
        with torch.no_grad(), autocast:
            teacher = pipe.targets(batch)
            terms, _ = step_module(batch, teacher, 0.5)
            loss = torch.stack([t.float() for t in terms.values()]).sum()
    finally:
        torch.set_rng_state(state)
    return float(loss)


def make_models(teacher_arch: str, student_arch: str, n_classes: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return create_model(teacher_arch, n_classes), create_model(student_arch, n_classes)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def environment() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_sha": sha.stdout.strip() or None,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def write_json(path: str | None, record: dict[str, Any]) -> None:
    text = json.dumps(record, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


def timed_windows(
    steps: dict[str, Callable[[], None]],
    *,
    windows: int,
    steps_per_window: int,
    warmup: int,
    batch: int,
    device: torch.device,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Images/s of each step function over alternating windows (ABBA: drift in load cancels); every window runs
    `warmup` untimed steps first. Returns (rates per mode, peak CUDA MiB per mode)."""
    modes = list(steps)
    rates: dict[str, list[float]] = {m: [] for m in modes}
    peak_cuda: dict[str, float] = {}
    for w in range(windows):
        order = modes if w % 2 == 0 else modes[::-1]
        for mode in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(warmup):
                steps[mode]()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_window):
                steps[mode]()
            _sync(device)
            rates[mode].append(steps_per_window * batch / (time.perf_counter() - t0))
            if device.type == "cuda":
                peak_cuda[mode] = max(peak_cuda.get(mode, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
            print(f"window {w + 1} {mode:<9} {rates[mode][-1]:8.1f} img/s", file=sys.stderr, flush=True)
    return rates, peak_cuda


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

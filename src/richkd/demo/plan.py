"""The demo's plan: which data (and the one-line error when there is none), how many images and epochs, which
models, and a rough time estimate for this machine. Plain values only; nothing here trains or writes."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from richkd.errors import RichKDError

DATASETS = ("fashion_mnist", "cifar10")
SURROGATE_NAME = "surrogate (EfficientNet-Lite0 + MiniLM, not CLIP)"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# Sized for < 15 min on 2 CPU cores (docs/demo.md has the measurements); --scale F multiplies images and epochs.
FULL = {"train_images": 3000, "test_images": 1000, "teacher_epochs": 6, "student_epochs": 6,
        "robust_images": 200, "nce_k": 1024, "cost_repeats": 3}
QUICK = {"train_images": 200, "test_images": 100, "teacher_epochs": 1, "student_epochs": 1,
         "robust_images": 40, "nce_k": 256, "cost_repeats": 1}
QUICK_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast")
SEVERITIES, QUICK_SEVERITIES = (1, 3, 5), (1, 5)


@dataclass(frozen=True)
class DemoData:
    """The dataset the demo runs on: `name` and `root` as `load_dataset` takes them, and a label for people."""

    name: str
    root: str | None
    label: str


@dataclass(frozen=True)
class DemoPlan:
    """Everything that defines the demo's results (plus device and threads, which only change its speed)."""

    data: DemoData
    quick: bool
    scale: float
    seed: int
    device: str
    threads: int | None
    train_images: int  # stratified training subset (data.train_limit)
    test_images: int  # stratified test subset: per-epoch evaluation, predictions and analyses
    teacher_epochs: int
    student_epochs: int
    robust_images: int  # stratified test subset corrupted for the robustness step
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    nce_k: int  # negatives of RichKD's contrastive term (reference 16384; a few thousand images need far fewer)
    cost_repeats: int
    teacher_arch: str = "resnet20"
    student_arch: str = "resnet8"
    batch_size: int = 128
    lr: float = 0.05
    logit_alpha: float = 0.7  # reference alpha of z_F = alpha * z_T + (1 - alpha) * s * z_C
    vlm_logit_scale: float = 1.0  # reference s (METHOD.md 2)

    def settings(self) -> dict[str, Any]:
        """The values a finished step depends on: a rerun with other settings must not reuse its outputs."""
        d = asdict(self)
        for key in ("device", "threads"):
            d.pop(key)
        d["data"].pop("label")
        return d


def resolve_data(dataset: str, root: str | None) -> DemoData:
    """The dataset to use, checked for presence without decoding it; RichKDError naming both ways to get data."""
    from richkd.data import fashion_mnist

    if dataset not in DATASETS:
        raise RichKDError(f"--dataset {dataset!r}: the demo runs on {' or '.join(DATASETS)}")
    if dataset == "fashion_mnist":
        folder = Path(root).expanduser() if root is not None else fashion_mnist.DEFAULT_ROOT
        stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
        if all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in stems):
            return DemoData("fashion_mnist", str(folder), f"Fashion-MNIST ({folder})")
        where = f"under --root {folder}" if root is not None else f"at {folder}"
        raise RichKDError(
            f"no dataset found: Fashion-MNIST is not installed {where}; install it with "
            "`sudo apt-get install dataset-fashion-mnist`, or run on CIFAR-10 with `richkd demo --dataset cifar10 "
            "--root PATH` (an image folder, a .tar.gz of one, or the official python pickles)"
        )
    if root is None:
        raise RichKDError("--dataset cifar10 needs --root PATH (an image folder with train/ and test/, a .tar.gz of "
                          "one, or the official python pickles), or drop --dataset to use Fashion-MNIST "
                          "(`sudo apt-get install dataset-fashion-mnist`)")
    from richkd.data.cifar import CIFAR_SPECS, find_cifar_folder

    path = Path(root).expanduser()
    if not path.exists():
        raise RichKDError(f"--root {path} does not exist: give a CIFAR-10 image folder, archive or pickle folder")
    if path.is_dir() and find_cifar_folder(CIFAR_SPECS["cifar10"], path) is not None:
        return DemoData("cifar10", str(path.resolve()), f"CIFAR-10, official pickles ({path})")
    if path.is_dir() or path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return DemoData("imagefolder", str(path.resolve()), f"CIFAR-10 image folder ({path})")
    raise RichKDError(f"--root {path} is neither a folder nor a .tar/.tar.gz archive of CIFAR-10")


def make_plan(*, data: DemoData, quick: bool, scale: float, seed: int, device: str,
              threads: int | None) -> DemoPlan:
    """The default plan (or --quick), images and epochs multiplied by `scale`."""
    if not (math.isfinite(scale) and scale > 0):
        raise RichKDError(f"--scale must be a positive number, got {scale}")
    if threads is not None and threads < 1:
        raise RichKDError(f"--threads must be >= 1, got {threads}")
    base = QUICK if quick else FULL

    def scaled(key: str, minimum: int) -> int:
        return max(minimum, round(base[key] * scale))

    return DemoPlan(
        data=data, quick=quick, scale=scale, seed=seed, device=device, threads=threads,
        train_images=scaled("train_images", 20), test_images=scaled("test_images", 20),
        teacher_epochs=scaled("teacher_epochs", 1), student_epochs=scaled("student_epochs", 1),
        robust_images=scaled("robust_images", 10), nce_k=base["nce_k"], cost_repeats=base["cost_repeats"],
        corruptions=QUICK_CORRUPTIONS if quick else _all_corruptions(),
        severities=QUICK_SEVERITIES if quick else SEVERITIES,
    )


def _all_corruptions() -> tuple[str, ...]:
    from richkd.robustness.corruptions import CORRUPTIONS

    return tuple(CORRUPTIONS)


def _train_rate(arch: str, device: str, batch: int) -> float:
    """Training images per second of `arch` here: the faster of two SGD steps on random data at the demo's batch
    size, after a warm-up step (the first pays for allocations and kernel selection; small models on a CPU are bound by
    per-step overheads, so a smaller batch would mislead)."""
    from richkd.models import create_model

    dev = torch.device(device)
    model = create_model(arch, 10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, 32, 32, device=dev), torch.randint(0, 10, (batch,), device=dev)
    times = []
    for _ in range(3):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return batch / max(min(times[1:]), 1e-6)


def estimate_seconds(plan: DemoPlan) -> dict[str, float]:
    """Rough seconds per step on this machine: the measured training speed of both models (small CIFAR models on a
    CPU are bound by overheads, not FLOPs, so it is measured rather than scaled), the rest by rules of thumb
    measured on a 2-core AMD EPYC: a forward pass costs 1/3 of a training step, the surrogate's image tower
    (128 px) runs at 1/5 of the student's training speed, corrupting one image with all 19 corruptions takes
    10 ms, and each command spends ~4 s loading data and models."""
    student = _train_rate(plan.student_arch, plan.device, plan.batch_size)
    teacher = _train_rate(plan.teacher_arch, plan.device, plan.batch_size)
    fwd_s, fwd_t = 1 / (3 * student), 1 / (3 * teacher)  # seconds per image, inference
    s_imgs = plan.train_images * plan.student_epochs
    cells = plan.robust_images * len(plan.corruptions) * len(plan.severities)
    return {
        "teacher": 4 + plan.train_images * plan.teacher_epochs / teacher
        + plan.teacher_epochs * plan.test_images * fwd_t,
        "target caches": 15 + (plan.train_images + plan.test_images) * 5 / student,
        "students": 4 * (4 + s_imgs / student + plan.student_epochs * plan.test_images * fwd_s)
        + 3 * s_imgs * fwd_t * 1.3,
        "predictions + analyses": 8 * 4 + plan.test_images * (2 * fwd_t + 4 * fwd_s),
        "robustness": 4 + cells * (0.01 * len(plan.corruptions) / 19 + fwd_t + 4 * fwd_s),
        "cost + report": 15 + (plan.cost_repeats + 1) * 256 * (fwd_t + 4 * fwd_s),
    }


def describe_plan(plan: DemoPlan, estimate: dict[str, float] | None) -> str:
    """The short plan printed before any work: steps, sizes, and roughly how long each takes here."""
    mode = "quick" if plan.quick else "default"
    lines = [
        f"richkd demo ({mode}{'' if plan.scale == 1 else f', scale {plan.scale:g}'}) on {plan.data.label}, "
        f"device {plan.device}, {torch.get_num_threads()} threads",
        f"  1. teacher        {plan.teacher_arch}, {plan.train_images} training images, {plan.teacher_epochs} "
        f"epochs, evaluated on {plan.test_images} test images",
        f"  2. target caches  vision-language targets of the {plan.train_images} training and {plan.test_images} "
        f"test images from the {SURROGATE_NAME}",
        f"  3. students       {plan.student_arch} x 4, {plan.student_epochs} epochs each: vanilla, KD, the "
        f"alpha*z_T control (alpha {plan.logit_alpha}, no VLM), RichKD-L+F (alpha {plan.logit_alpha}, "
        f"s {plan.vlm_logit_scale:g})",
        "  4. predictions    teacher, fused teacher, surrogate zero-shot, 4 students on the test images",
        "  5. analyses       calibration, confidence quadrants and flows, inter-class consistency",
        f"  6. robustness     {len(plan.corruptions)} corruptions x severities "
        f"{','.join(map(str, plan.severities))} on {plan.robust_images} test images",
        "  7. cost           parameters, FLOPs, latency, throughput",
        "  8. report         HTML + Markdown",
    ]
    if estimate is not None:
        total = sum(estimate.values())
        parts = ", ".join(f"{name} {_minutes(sec)}" for name, sec in estimate.items())
        lines.append(f"rough time here: {_minutes(total)} ({parts}); finished steps are reused when rerun")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"

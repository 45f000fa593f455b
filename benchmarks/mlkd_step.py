"""What MLKD's strong view costs: its batched augmentation vs a resnet8x4 step, and an MLKD step vs a KD step,
measured side by side in one process (issue 22).

strong_aug    draw + apply one batch's strong view (crop/flip, RandAugment(2), Cutout, normalise): what MLKD adds
              to batch making (richkd.data.augment.apply_strong_augment, via BatchMaker(strong_view=True)).
student_step  one resnet8x4 SGD step on a batch (CE only, batched crop/flip): "a resnet8x4 step".
kd_step       one KD training step through the trainer's `train_step` (teacher forward + student step).
mlkd_step     one MLKD training step: the weak and the strong view, each through teacher and student.

Timed windows alternate (ABBA) so load from other processes hits every mode alike; reported: median images/s of
each, milliseconds per batch, and the ratios strong_aug / student_step and mlkd_step / kd_step.

    python benchmarks/mlkd_step.py --threads 1 --out benchmarks/results/cpu_mlkd_step.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import environment, make_models, synthetic_split, timed_windows, write_json  # noqa: E402

from richkd.data.augment import apply_strong_augment, normalize, sample_strong_augment  # noqa: E402
from richkd.data.loader import DeviceData, epoch_batches  # noqa: E402
from richkd.distill import KD, MLKD, Vanilla  # noqa: E402
from richkd.engine.batches import BatchMaker  # noqa: E402
from richkd.engine.trainer import StepModule, train_step  # noqa: E402
from richkd.teachers.frozen import OnlineTeacher  # noqa: E402


def _rows(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from epoch_batches(n, batch, shuffle=True, drop_last=True, generator=generator)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per window")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    teacher_arch, student_arch = args.pair.split(":")
    ds = synthetic_split(args.rows, args.classes)
    data = DeviceData(ds, device)
    teacher, _ = make_models(teacher_arch, student_arch, args.classes)
    targets = OnlineTeacher(teacher.to(device))
    generator = torch.Generator().manual_seed(0)
    rows = _rows(len(ds), args.batch, generator)

    def maker(strong: bool) -> BatchMaker:
        return BatchMaker(data, mean=ds.mean, std=ds.std, augment=True, pad=4, channels_last=False, strong_view=strong)

    def trainer_step(distiller: Any, strong: bool, with_teacher: bool) -> Any:
        _, student = make_models(teacher_arch, student_arch, args.classes)
        module = StepModule(student.to(device).train(), distiller)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
        batches = maker(strong)

        def step() -> None:
            batch = batches(next(rows), generator)
            train_step(module, targets if with_teacher else None, optimizer, batch, 0.5, bf16=False)

        return step

    def strong_aug() -> None:
        images, _ = data.gather(next(rows))
        drawn = sample_strong_augment(images.shape[0], pad=4, generator=generator)
        normalize(apply_strong_augment(images, drawn, pad=4), ds.mean, ds.std)

    steps = {
        "strong_aug": strong_aug,
        "student_step": trainer_step(Vanilla(ce_weight=1.0), strong=False, with_teacher=False),
        "kd_step": trainer_step(KD(temperature=4.0, kd_weight=0.9, ce_weight=0.1), strong=False, with_teacher=True),
        "mlkd_step": trainer_step(MLKD(ce_weight=0.1, kd_weight=0.9, temperature=4.0), strong=True, with_teacher=True),
    }
    rates, _ = timed_windows(
        steps, windows=args.windows, steps_per_window=args.steps, warmup=args.warmup, batch=args.batch, device=device
    )
    median = {mode: statistics.median(r) for mode, r in rates.items()}
    ms = {mode: 1000.0 * args.batch / rate for mode, rate in median.items()}
    record = {
        "benchmark": "mlkd_step",
        "pair": args.pair,
        "batch": args.batch,
        "images_per_s": rates,
        "median_images_per_s": median,
        "ms_per_batch": ms,
        "strong_aug_over_student_step": ms["strong_aug"] / ms["student_step"],
        "strong_aug_over_kd_step": ms["strong_aug"] / ms["kd_step"],
        "mlkd_step_over_kd_step": ms["mlkd_step"] / ms["kd_step"],
        "environment": environment(),
    }
    write_json(args.out, record)
    print({k: record[k] for k in ("ms_per_batch", "strong_aug_over_student_step", "mlkd_step_over_kd_step")})
    return record


if __name__ == "__main__":
    main()

"""Images/s of KD + a feature term beside plain KD, side by side in one process, with each step's FLOPs.

The question (issue 21): does a feature method's step cost no more than its share of extra FLOPs? For each method
the same student/teacher/batch run a full step (teacher forward, student forward + backward, SGD) as KD alone and
as KD + the feature term; windows alternate (ABBA) so load from other processes hits both alike. FLOPs of one
step are counted with torch's FlopCounterMode (matmuls and convolutions, forward + backward).
Reported per method: median images/s of both, time ratio KD+X / KD, FLOP ratio KD+X / KD.

    python benchmarks/feature_step.py --threads 2 --out benchmarks/results/cpu_feature_step_resnet32x4_resnet8x4.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import environment, make_models, timed_windows, write_json  # noqa: E402

from richkd.data.batch import Batch  # noqa: E402
from richkd.distill import KD, Distiller  # noqa: E402
from richkd.distill.features import FEATURE_TERMS, FeatureOptions, WithFeature, build_feature_term  # noqa: E402
from richkd.models import feature_shapes  # noqa: E402
from richkd.teachers.frozen import OnlineTeacher  # noqa: E402


def _step_fn(student: torch.nn.Module, teacher: OnlineTeacher, distiller: Distiller, batch: Batch) -> Callable[
    [], None
]:
    params = [p for p in [*student.parameters(), *distiller.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step() -> None:
        terms = distiller(student(batch.images), teacher(batch), batch, 0.5)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()

    return step


def _first_terms(student: torch.nn.Module, teacher: OnlineTeacher, distiller: Distiller, batch: Batch) -> dict[
    str, float
]:
    """The loss terms of one forward on the batch (no update): KD's terms must not change when a term is added."""
    with torch.no_grad():
        return {k: float(v) for k, v in distiller(student(batch.images), teacher(batch), batch, 0.5).items()}


def _flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    parser.add_argument("--methods", default=",".join(FEATURE_TERMS.names()))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher_arch, student_arch = args.pair.split(":")
    teacher_model, student = make_models(teacher_arch, student_arch, 100)
    teacher = OnlineTeacher(teacher_model)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 100, (args.batch,), generator=g),
                  torch.arange(args.batch), torch.zeros(args.batch, dtype=torch.long))
    shapes = (feature_shapes(student, 32), feature_shapes(teacher_model, 32))
    results: dict[str, Any] = {}
    for method in args.methods.split(","):
        kd = KD(temperature=4.0, kd_weight=0.9, ce_weight=0.1)
        term = build_feature_term(method, *shapes, FeatureOptions())
        combined = WithFeature(KD(temperature=4.0, kd_weight=0.9, ce_weight=0.1), term,
                               weight=FEATURE_TERMS.get(method).default_weight, key=method)
        steps = {
            "kd": _step_fn(student, teacher, kd, batch),
            f"kd+{method}": _step_fn(student, teacher, combined, batch),
        }
        first = {"kd": _first_terms(student, teacher, kd, batch),
                 f"kd+{method}": _first_terms(student, teacher, combined, batch)}
        flops = {name: _flops(fn) for name, fn in steps.items()}
        rates, _ = timed_windows(steps, windows=args.windows, steps_per_window=args.steps, warmup=args.warmup,
                                 batch=args.batch, device=torch.device("cpu"))
        med = {name: statistics.median(r) for name, r in rates.items()}
        results[method] = {
            "images_per_s": med,
            "rates": rates,
            "time_ratio": med["kd"] / med[f"kd+{method}"],
            "first_step_terms": first,
            "flops_per_step": flops,
            "flop_ratio": flops[f"kd+{method}"] / flops["kd"],
            "connector_parameters": sum(p.numel() for p in term.parameters()),
        }
        print(f"{method:<7} kd {med['kd']:7.1f} img/s  kd+{method} {med[f'kd+{method}']:7.1f} img/s  "
              f"time x{results[method]['time_ratio']:.3f}  flops x{results[method]['flop_ratio']:.3f}",
              file=sys.stderr, flush=True)
    record = {"benchmark": "feature_step", "pair": args.pair, "batch": args.batch, "environment": environment(),
              "methods": results}
    write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()

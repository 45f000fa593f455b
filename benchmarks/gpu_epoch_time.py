"""Epoch time of RichKD-L+F resnet32x4 -> resnet8x4 on one GPU, CIFAR-100-sized, batch 64: the 240-epoch goal.

Runs the real trainer (`richkd.engine.trainer.fit`: batched on-device augmentation, bf16 autocast,
channels_last, fused targets, CRD memory banks, evaluation on a 10k test split and a checkpoint every epoch)
on synthetic data (50k train / 10k test uint8 images, 100 classes) and a synthetic 768-d target cache, for a
few epochs, and reports per-epoch train time, images/s, the per-epoch evaluation + checkpoint overhead and the
projected time of a 240-epoch run. Sized to finish in well under 5 minutes on an H200.

    python benchmarks/gpu_epoch_time.py                      # cuda, bf16, channels_last, 3 epochs
    python benchmarks/gpu_epoch_time.py --compile --fused    # + torch.compile (student and teacher), fused SGD
    python benchmarks/gpu_epoch_time.py --teacher online,cached --out benchmarks/results/gpu_teacher_cache.json
    python benchmarks/gpu_epoch_time.py --tiny --device cpu  # smoke test of the script itself (CI)

`--teacher cached` serves the teacher's logits and features from a teacher cache of the real format (random
content; issue 12) instead of running it: the step is the student's alone. `--teacher online,cached` runs both
in one process, one after the other, and reports the ratio, plus the cost of building a real cache for
`--build-rows` rows (all 162 views) projected to the whole split, on its own line.

Goals on one H200: 240 epochs in < 15 min with the online teacher (issue "Speed and scale"), < 5 min with the
cached teacher (issue 12; the cache build on its own line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import (  # noqa: E402
    build_cost,
    build_pipeline,
    environment,
    make_models,
    random_teacher_cache,
    synthetic_cache,
    synthetic_split,
    write_json,
)

from richkd.caches.teacher import CachedTeacher  # noqa: E402
from richkd.data.loader import DeviceData  # noqa: E402
from richkd.engine.batches import BatchMaker  # noqa: E402
from richkd.engine.trainer import FitParts, Schedule, fit  # noqa: E402

GOAL_EPOCHS = 240
GOAL_S = {"online": 15 * 60, "cached": 5 * 60}


def _profile(parts: FitParts, steps: int) -> str:
    """Top kernels/ops of `steps` training steps (after the timed run), for deciding what to optimise next."""
    from torch.profiler import ProfilerActivity, profile

    from richkd.data.loader import epoch_batches
    from richkd.engine.trainer import StepModule, train_step

    device = parts.test_data.images.device
    module = StepModule(parts.student, parts.distiller).train()
    gen = torch.Generator().manual_seed(1)
    rows = epoch_batches(len(parts.train_batches.data), parts.batch_size, shuffle=True, drop_last=True, generator=gen)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for r in rows[:steps]:
            batch = parts.train_batches(r, gen)
            train_step(module, parts.targets, parts.optimizer, batch, 0.5, bf16=parts.bf16, check_finite=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table: str = prof.key_averages().table(sort_by=key, row_limit=25)
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="epochs run; the first is warm-up (compile, autotune)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (projection scales up)")
    parser.add_argument("--nce-k", type=int, default=16384)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile student and teacher (train.compile)")
    parser.add_argument("--fused", action="store_true", help="fused SGD (optim.fused)")
    parser.add_argument("--profile", type=int, default=0, help="then profile this many steps and print the top ops")
    parser.add_argument("--tiny", action="store_true", help="256 rows, K=32, 2 epochs: checks the script runs")
    parser.add_argument("--teacher", default="online",
                        help="comma list of: online (run the frozen teacher), cached (teacher cache lookups)")
    parser.add_argument("--build-rows", type=int, default=64,
                        help="with cached: rows whose 162 views are built through the real builder to time it")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.test_rows, args.nce_k, args.epochs = 256, 128, 32, 2
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: pass --device cpu (and --tiny) to check the script")
        torch.backends.cudnn.benchmark = True
    else:
        print("NOTE: not a GPU run; these numbers say nothing about the GPU goal", file=sys.stderr)
    bf16, channels_last = not args.no_bf16, not args.no_channels_last
    teacher_arch, student_arch = args.pair.split(":")

    modes = args.teacher.split(",")
    if not modes or any(m not in ("online", "cached") for m in modes):
        raise SystemExit(f"--teacher takes a comma list of online, cached; got {args.teacher!r}")
    t_setup = time.perf_counter()
    train = synthetic_split(args.rows, 100, seed=0, split="train")
    test = synthetic_split(args.test_rows, 100, seed=1, split="test")
    teacher, student = make_models(teacher_arch, student_arch, 100)
    tmp = tempfile.TemporaryDirectory(prefix="richkd-gpu-bench-")
    cache = synthetic_cache(Path(tmp.name) / "cache", train)
    cache.to_device(device)
    setup_s = time.perf_counter() - t_setup
    runs = {mode: _run(mode, args, train, test, teacher, student, cache, device, Path(tmp.name), bf16, channels_last)
            for mode in modes}
    result: dict[str, Any] = {
        "benchmark": "gpu_epoch_time",
        "pair": args.pair,
        "device": str(device),
        "rows": args.rows,
        "test_rows": args.test_rows,
        "batch": args.batch,
        "nce_k": args.nce_k,
        "bf16": bf16,
        "channels_last": channels_last,
        "compile": args.compile,
        "fused_sgd": args.fused,
        "setup_s": round(setup_s, 1),
        "runs": runs,
        **runs[modes[0]],  # the first mode's numbers at top level, as before
    }
    if "online" in runs and "cached" in runs:
        result["cached_over_online_train_images_per_s"] = round(
            runs["cached"]["train_images_per_s"] / runs["online"]["train_images_per_s"], 2)
    if "cached" in runs:
        build_s = build_cost(teacher.to(device), train, min(args.build_rows, args.rows), teacher_arch,
                             Path(tmp.name), bf16)
        result["cache_build_s_per_image"] = build_s
        result["cache_build_views_per_s"] = round(162 / build_s, 1)
        result["cache_build_projected_min"] = round(build_s * args.rows / 60, 1)
    result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None
    result["environment"] = environment()
    print(json.dumps({k: v for k, v in result.items() if k not in ("environment", "runs")}, indent=2))
    if "cache_build_projected_min" in result:
        print(f"cache build (separate): {result['cache_build_views_per_s']} views/s, "
              f"{result['cache_build_projected_min']} min for {args.rows} rows x 162 views")
    write_json(args.out, result)
    tmp.cleanup()
    return result


def _run(mode: str, args: argparse.Namespace, train: Any, test: Any, teacher: torch.nn.Module,
         student: torch.nn.Module, cache: Any, device: torch.device, tmp: Path, bf16: bool,
         channels_last: bool) -> dict[str, Any]:
    """One `fit` of a few epochs with the teacher online or cached; per-epoch times and the 240-epoch projection."""
    pipe = build_pipeline(
        teacher=teacher,
        student=student,
        ds=train,
        cache=cache,
        device=device,
        channels_last=channels_last,
        nce_k=args.nce_k,
        foreach=not args.fused,
        fused=args.fused,
        compile=args.compile,
    )
    cached = mode == "cached"
    if cached:
        t_cache = random_teacher_cache(tmp / "teacher_cache", train, args.pair.split(":")[0],
                                       int(teacher.feature_dim))
        t_cache.to_device(device)
        pipe.targets.teacher = CachedTeacher(t_cache)
        pipe.targets.vlm_view = 0  # batches carry exact view ids; the vlm cache serves its plain view (build.py)
    parts = FitParts(
        student=pipe.student,
        arch=args.pair.split(":")[1],
        distiller=pipe.distiller,
        targets=pipe.targets,
        optimizer=pipe.optimizer,
        schedule=Schedule(
            epochs=args.epochs, base_lr=0.05, schedule="step", milestones=(150, 180, 210), gamma=0.1, warmup_epochs=0
        ),
        train_batches=BatchMaker(
            DeviceData(train, device), train.mean, train.std, augment=True, pad=4, channels_last=channels_last,
            exact_views=cached,
        ),
        test_data=DeviceData(test, device),
        test_mean=train.mean,
        test_std=train.std,
        classes=train.classes,
        batch_size=args.batch,
        eval_batch_size=512,
        seed=0,
        bf16=bf16,
        channels_last=channels_last,
        progress=False,
        max_steps_per_epoch=args.max_steps,
    )
    run_dir = tmp / f"run_{mode}"
    t0 = time.perf_counter()
    fit(parts, run_dir, resume=False)
    total_s = time.perf_counter() - t0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_s = [r["time/train_s"] for r in records]
    full_steps = -(-args.rows // args.batch)
    steps_run = min(full_steps, args.max_steps or full_steps)
    steady = train_s[1:] or train_s
    epoch_train_s = statistics.median(steady) * full_steps / steps_run  # a full epoch
    overhead_s = (total_s - sum(train_s)) / len(records)  # evaluation + checkpoint + logging per epoch
    first_extra_s = max(0.0, train_s[0] - statistics.median(steady)) * full_steps / steps_run
    projected_s = GOAL_EPOCHS * (epoch_train_s + overhead_s) + first_extra_s
    out = {
        "teacher": mode,
        "epochs_run": len(records),
        "steps_per_epoch_run": steps_run,
        "train_s_per_epoch_measured": train_s,
        "epoch_train_s": round(epoch_train_s, 2),
        "train_images_per_s": round(args.rows / epoch_train_s, 1),
        "eval_and_checkpoint_s_per_epoch": round(overhead_s, 2),
        "end_to_end_images_per_s": round(args.rows / (epoch_train_s + overhead_s), 1),
        "first_epoch_extra_s": round(first_extra_s, 1),
        "projected_240_epochs_min": round(projected_s / 60, 1),
        "goal_240_epochs_min": GOAL_S[mode] / 60,
        "meets_goal": projected_s <= GOAL_S[mode],
    }
    if args.profile:
        print(f"--- profile, teacher {mode}")
        print(_profile(parts, args.profile))
    return out

if __name__ == "__main__":
    main()

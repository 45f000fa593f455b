"""Images/s of a RichKD-L+F step with the teacher looked up in a teacher cache vs run online vs the reference-style
loop, side by side in one process; the cost of building the cache; and the break-even in student epochs.

cached     BatchMaker(exact_views=True) + CachedTeacher (model.teacher_cache): no teacher forward in the step.
online     the path `richkd train` takes without a teacher cache (BN-folded teacher, channels_last).
reference  mdistiller/CRD style (benchmarks/train_step.py): DataLoader with per-sample Python augmentation, fp32.

cached and online use bf16 autocast where it is fast on this device (train.bf16=auto); reference is fp32.
The step cache holds random float16 content of the real format and shapes (content does not change speed), so
only the online and reference paths' first-step losses are compared (`first_step_loss`);
the build cost is measured by building a real cache for `--build-rows` rows through the BN-folded teacher.

    python benchmarks/teacher_cache.py --pair resnet32x4:resnet8x4 --threads 2 --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import (  # noqa: E402
    build_cost,
    build_pipeline,
    environment,
    first_step_loss,
    make_models,
    parity_batch,
    peak_rss_mb,
    random_teacher_cache,
    synthetic_cache,
    synthetic_split,
    timed_windows,
    write_json,
)

from richkd.build import resolve_bf16  # noqa: E402
from richkd.caches.teacher import CachedTeacher  # noqa: E402
from richkd.data.batch import Batch  # noqa: E402
from richkd.data.loader import DeviceData, epoch_batches, reference_loader  # noqa: E402
from richkd.engine.batches import BatchMaker  # noqa: E402
from richkd.engine.trainer import train_step  # noqa: E402


def _cycle_rows(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from epoch_batches(n, batch, shuffle=True, drop_last=True, generator=generator)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet32x4:resnet8x4", help="teacher:student")
    parser.add_argument("--rows", type=int, default=10_000, help="training rows (the step cache holds all of them)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nce-k", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader worker processes")
    parser.add_argument("--windows", type=int, default=4, help="timed windows per side")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per window")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each window")
    parser.add_argument("--modes", default="cached,online,ref", help="comma list of: cached, online, ref")
    parser.add_argument("--build-rows", type=int, default=8, help="rows whose 162 views are built to time the builder")
    parser.add_argument("--epoch-rows", type=int, default=50_000, help="rows of the split for the break-even")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = resolve_bf16("auto", device)
    teacher_arch, student_arch = args.pair.split(":")
    ds = synthetic_split(args.rows, args.classes)
    teacher, student = make_models(teacher_arch, student_arch, args.classes)
    tmp = tempfile.TemporaryDirectory(prefix="richkd-bench-")
    vlm_cache = synthetic_cache(Path(tmp.name) / "vlm", ds)
    vlm_cache.to_device(device)
    modes = args.modes.split(",")
    steps: dict[str, Callable[[], None]] = {}
    check = parity_batch(ds, args.batch, device)
    first_loss: dict[str, float] = {}
    for mode in modes:
        fast = mode != "ref"
        torch.manual_seed(0)  # every path starts from the same projection heads and memory banks
        pipe = build_pipeline(teacher=teacher, student=student, ds=ds, cache=vlm_cache, device=device,
                              channels_last=fast, nce_k=args.nce_k, foreach=fast, fold_teacher=fast)
        if mode == "cached":
            t_cache = random_teacher_cache(Path(tmp.name) / "teacher", ds, teacher_arch, int(teacher.feature_dim))
            t_cache.to_device(device)
            pipe.targets.teacher = CachedTeacher(t_cache)
            pipe.targets.vlm_view = 0  # batches carry exact view ids; the vlm cache serves its plain view (build.py)
        if fast:
            maker = BatchMaker(DeviceData(ds, device), ds.mean, ds.std, augment=True, pad=4, channels_last=True,
                               exact_views=mode == "cached")
            gen = torch.Generator().manual_seed(0)
            rows_iter = _cycle_rows(len(ds), args.batch, gen)

            def step(pipe: Any = pipe, maker: BatchMaker = maker, rows_iter: Any = rows_iter,
                     gen: torch.Generator = gen) -> None:
                batch = maker(next(rows_iter), gen)
                train_step(pipe.step_module, pipe.targets, pipe.optimizer, batch, 0.5, bf16=bf16, check_finite=False)
        else:
            batches = iter(reference_loader(ds, args.batch, num_workers=args.workers))

            def step(pipe: Any = pipe, batches: Any = batches) -> None:
                images, labels, idx = next(batches)
                batch = Batch(images.to(device), labels.to(device), idx.to(device), torch.zeros_like(idx).to(device))
                train_step(pipe.step_module, pipe.targets, pipe.optimizer, batch, 0.5, bf16=False, check_finite=False)
        pipe.step_module.train()
        steps[mode] = step
        if mode != "cached":  # the step cache holds random teacher outputs: its loss differs by design
            first_loss[mode] = first_step_loss(pipe, check, bf16=bf16 and fast, channels_last=fast)
        if mode == "online" and bf16:  # the same path with bf16 off: isolates rounding from everything else
            first_loss["online_without_bf16"] = first_step_loss(pipe, check, bf16=False, channels_last=True)

    t_start = time.perf_counter()
    rates, _ = timed_windows(steps, windows=args.windows, steps_per_window=args.steps, warmup=args.warmup,
                             batch=args.batch, device=device)
    medians = {m: statistics.median(r) for m, r in rates.items()}
    seconds_per_image = build_cost(teacher.to(device), ds, args.build_rows, teacher_arch, Path(tmp.name), bf16)
    result: dict[str, Any] = {
        "benchmark": "teacher_cache",
        "pair": args.pair,
        "loss": "RichKD-L+F: 1.0*CE + 3.0*KD(T=3, fused alpha=0.7) + 0.8*CRD(fused lambda=0.7, "
        f"K={args.nce_k}, dim=128)",
        "bf16": bf16, "rows": args.rows, "batch": args.batch, "threads": args.threads, "windows": args.windows,
        "steps_per_window": args.steps, "warmup_per_window": args.warmup, "images_per_s": rates,
        "median_images_per_s": medians,
        # Loss of the online and reference paths' first step on one shared, un-augmented batch (same seed): they
        # must agree for the ratio to compare like with like. The cached path reads random teacher outputs.
        "first_step_loss": first_loss,
        "build_rows": args.build_rows, "build_s_per_image": seconds_per_image,
        "build_views_per_s": 162 / seconds_per_image,
        "build_s_for_epoch_rows": seconds_per_image * args.epoch_rows,
    }
    for a, b in (("cached", "ref"), ("cached", "online"), ("online", "ref")):
        if a in medians and b in medians:
            result[f"{a}_over_{b}"] = medians[a] / medians[b]
            result[f"median_paired_{a}_over_{b}"] = statistics.median(
                x / y for x, y in zip(rates[a], rates[b], strict=True))
    if "cached" in medians and "online" in medians:
        saved_per_image = 1 / medians["online"] - 1 / medians["cached"]
        result["break_even_epochs"] = seconds_per_image / saved_per_image if saved_per_image > 0 else None
    result |= {"peak_rss_mb_whole_process": round(peak_rss_mb(), 1),
               "wall_s": round(time.perf_counter() - t_start, 1), "environment": environment()}
    lines = [f"{args.pair}  batch {args.batch}  threads {args.threads}  bf16 {bf16}"]
    lines += [f"  {m:<7} median {v:8.1f} img/s  ({', '.join(f'{x:.1f}' for x in rates[m])})"
              for m, v in medians.items()]
    lines += [f"  {k} = {v:.2f}x" for k, v in result.items() if "_over_" in k and not k.startswith("median")]
    lines.append(f"  build: {seconds_per_image * 1e3:.1f} ms per image ({162 / seconds_per_image:.0f} views/s); "
                 f"{args.epoch_rows} rows: {seconds_per_image * args.epoch_rows / 60:.1f} min")
    if result.get("break_even_epochs") is not None:
        lines.append(f"  break-even: {result['break_even_epochs']:.0f} student epochs (over all arms and seeds)")
    print("\n".join(lines))
    write_json(args.out, result)
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()

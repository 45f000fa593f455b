"""Images/s of a RichKD-L+F training step: ours vs a reference-style loop, measured side by side in one process.

ours       the whole split as one uint8 tensor on the device, batched crop/flip/normalise (BatchMaker),
           bf16 autocast, channels_last student and teacher, foreach SGD: the path `richkd train` takes.
reference  mdistiller/CRD style: a torch DataLoader with per-sample Python augmentation
           (richkd.data.loader.reference_loader), float32, contiguous (NCHW) tensors, default SGD.

Both run the same models and the same loss (frozen teacher forward, logits fused with cached vision-language
targets, KD + CRD with fused features and memory banks of K negatives), through the trainer's own
`train_step`. Timed windows alternate (ours, ref, ref, ours, ...) so load from other processes hits both
alike; each window first runs untimed warm-up steps (which also drains the DataLoader's prefetched batches).
Reported: median images/s of each, and the ratio of medians.

    python benchmarks/train_step.py --pair resnet32x4:resnet8x4 --threads 2 --out benchmarks/results/x.json
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/train_step.py ...
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
    build_pipeline,
    environment,
    first_step_loss,
    make_models,
    parity_batch,
    peak_rss_mb,
    synthetic_cache,
    synthetic_split,
    timed_windows,
    write_json,
)

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
    parser.add_argument("--rows", type=int, default=50_000, help="training rows (CIFAR-100: 50000)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nce-k", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader worker processes")
    parser.add_argument("--windows", type=int, default=4, help="timed windows per side")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each window")
    parser.add_argument("--modes", default="ours,ref", help="comma list of: ours, ref, ours_fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher_arch, student_arch = args.pair.split(":")
    ds = synthetic_split(args.rows, args.classes)
    teacher, student = make_models(teacher_arch, student_arch, args.classes)
    tmp = tempfile.TemporaryDirectory(prefix="richkd-bench-")
    cache = synthetic_cache(Path(tmp.name) / "cache", ds)
    cache.to_device(device)

    steps: dict[str, Callable[[], None]] = {}
    modes = args.modes.split(",")
    check = parity_batch(ds, args.batch, device)
    first_loss: dict[str, float] = {}
    for mode in modes:
        fast = mode == "ours"
        torch.manual_seed(0)  # every path starts from the same projection heads and memory banks
        pipe = build_pipeline(
            teacher=teacher,
            student=student,
            ds=ds,
            cache=cache,
            device=device,
            channels_last=fast,
            nce_k=args.nce_k,
            foreach=mode != "ref",
            fold_teacher=mode != "ref",
        )
        if mode in ("ours", "ours_fp32"):
            maker = BatchMaker(DeviceData(ds, device), ds.mean, ds.std, augment=True, pad=4, channels_last=fast)
            gen = torch.Generator().manual_seed(0)
            rows_iter = _cycle_rows(len(ds), args.batch, gen)

            def step(
                pipe: Any = pipe,
                maker: BatchMaker = maker,
                rows_iter: Any = rows_iter,
                gen: torch.Generator = gen,
                bf16: bool = fast,
            ) -> None:
                batch = maker(next(rows_iter), gen)
                train_step(pipe.step_module, pipe.targets, pipe.optimizer, batch, 0.5, bf16=bf16, check_finite=False)
        elif mode == "ref":
            loader = reference_loader(ds, args.batch, num_workers=args.workers)
            batches = iter(loader)

            def step(pipe: Any = pipe, batches: Any = batches) -> None:
                images, labels, idx = next(batches)
                batch = Batch(images.to(device), labels.to(device), idx.to(device), torch.zeros_like(idx).to(device))
                train_step(pipe.step_module, pipe.targets, pipe.optimizer, batch, 0.5, bf16=False, check_finite=False)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        pipe.step_module.train()
        steps[mode] = step
        first_loss[mode] = first_step_loss(pipe, check, bf16=fast, channels_last=fast)
        if mode == "ours":  # the same path with bf16 off: isolates rounding from everything else
            first_loss["ours_without_bf16"] = first_step_loss(pipe, check, bf16=False, channels_last=True)

    t_start = time.perf_counter()
    rates, peak_cuda = timed_windows(
        steps, windows=args.windows, steps_per_window=args.steps, warmup=args.warmup, batch=args.batch, device=device
    )
    medians = {m: statistics.median(r) for m, r in rates.items()}
    result: dict[str, Any] = {
        "benchmark": "train_step",
        "pair": args.pair,
        "loss": "RichKD-L+F: 1.0*CE + 3.0*KD(T=3, fused alpha=0.7) + 0.8*CRD(fused lambda=0.7, "
        f"K={args.nce_k}, dim=128)",
        "rows": args.rows,
        "batch": args.batch,
        "threads": args.threads,
        "reference_workers": args.workers,
        "windows": args.windows,
        "steps_per_window": args.steps,
        "warmup_per_window": args.warmup,
        "images_per_s": rates,
        "median_images_per_s": medians,
        # Loss of each path's first step on one shared, un-augmented batch (the first `batch` rows, same seed):
        # the paths must compute the same loss for their speed ratio to compare like with like.
        "first_step_loss": first_loss,
        "peak_rss_mb_whole_process": round(peak_rss_mb(), 1),
        "peak_cuda_mb": peak_cuda or None,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "environment": environment(),
    }
    if "ours" in medians and "ref" in medians:
        result["speedup_ours_over_ref"] = medians["ours"] / medians["ref"]
        # Each window's ours/ref pair ran back to back, so its ratio is the least disturbed by load drift.
        paired = [o / r for o, r in zip(rates["ours"], rates["ref"], strict=True)]
        result["paired_ratios"] = paired
        result["median_paired_ratio"] = statistics.median(paired)
    lines = [f"{args.pair}  batch {args.batch}  threads {args.threads}"]
    lines += [
        f"  {m:<9} median {v:8.1f} img/s  ({', '.join(f'{x:.1f}' for x in rates[m])})" for m, v in medians.items()
    ]
    if "speedup_ours_over_ref" in result:
        lines.append(
            f"  ours / ref = {result['speedup_ours_over_ref']:.2f}x (ratio of medians); "
            f"median of per-window ratios {result['median_paired_ratio']:.2f}x"
        )
    print("\n".join(lines))
    write_json(args.out, result)
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()

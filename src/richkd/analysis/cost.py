"""Model cost: parameters, FLOPs of one forward pass, latency and throughput, measured the same way for all.

FLOPs come from PyTorch's own counter (torch.utils.flop_counter), which counts a multiply-add as 2 FLOPs;
timings are medians of repeats after warm-up, in eval mode without autograd, so models compare fairly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from richkd.errors import RichKDError


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not (the size of the weights that ship)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> int:
    """FLOPs of one forward pass of one image (batch 1) as PyTorch's FlopCounterMode counts them."""
    x = torch.randn(1, *input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def _timed_runs(model: nn.Module, x: torch.Tensor, *, repeats: int, warmup: int) -> list[float]:
    """Seconds per forward pass of batch `x`, one value per repeat, after `warmup` untimed passes."""
    def sync() -> None:  # CUDA runs asynchronously: wait, or the clock stops before the work does
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    return times


def measure_cost(
    model: nn.Module,
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    device: torch.device,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """params, flops, and for every batch size B: latency_ms_bB and throughput_bB_img_s (medians).

    With the default batch sizes this gives the keys of cost.json (latency_ms_b1, throughput_b256_img_s).
    The model is measured in eval mode and put back in the mode it came in.
    """
    if repeats < 1 or warmup < 0:
        raise RichKDError(f"cost: repeats must be ≥ 1 and warmup ≥ 0 (got {repeats}, {warmup})")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise RichKDError(f"cost: batch sizes must be positive integers (got {list(batch_sizes)})")
    was_training = model.training
    model.eval()
    try:
        result: dict[str, Any] = {
            "params": count_params(model),
            "flops": count_flops(model, input_shape, device),
        }
        for batch in batch_sizes:
            x = torch.randn(batch, *input_shape, device=device)
            median_s = statistics.median(_timed_runs(model, x, repeats=repeats, warmup=warmup))
            result[f"latency_ms_b{batch}"] = 1000.0 * median_s
            result[f"throughput_b{batch}_img_s"] = batch / median_s
    finally:
        model.train(was_training)
    return result


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module reports."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"

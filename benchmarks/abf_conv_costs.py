"""Forward + backward time of the convolution shapes in ReviewKD's 32 x 32 ABF (resnet32x4 -> resnet8x4, batch 64)
beside a 3x3 64 -> 64 convolution of the network itself: which of its costs follow their FLOPs (docs/speed.md §11).

    python benchmarks/abf_conv_costs.py      # 1 thread, median of 5 after one warm-up
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def median_ms(fn: Callable[[], None], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def main() -> None:
    torch.set_num_threads(1)
    x64 = torch.randn(64, 64, 32, 32, requires_grad=True)
    x256 = torch.randn(64, 256, 32, 32, requires_grad=True)
    w_reduce = torch.randn(256, 64, 1, 1, requires_grad=True)  # ABF conv1: 64 -> 256, 1x1
    w_att, b_att = torch.randn(2, 256, 1, 1, requires_grad=True), torch.zeros(2, requires_grad=True)  # attention
    w_expand = torch.randn(64, 256, 3, 3, requires_grad=True)  # ABF conv2: 256 -> 64, 3x3
    w_net = torch.randn(64, 64, 3, 3, requires_grad=True)  # a resnet8x4 stage-1 convolution
    cases: dict[str, Callable[[], None]] = {
        "1x1 64->256 (ABF reduce)": lambda: F.conv2d(x64, w_reduce).sum().backward(),
        "1x1 256->2 (ABF attention)": lambda: F.conv2d(x256, w_att, b_att).sum().backward(),
        "3x3 256->64 (ABF expand)": lambda: F.conv2d(x256, w_expand, padding=1).sum().backward(),
        "3x3 64->64 (network)": lambda: F.conv2d(x64, w_net, padding=1).sum().backward(),
    }
    for name, fn in cases.items():
        print(f"{name:<28} {median_ms(fn):8.1f} ms forward + backward")


if __name__ == "__main__":
    main()

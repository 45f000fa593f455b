"""bf16_is_fast on CUDA devices (issue 27 item 6): only GPUs with native bf16 (compute capability >= 8.0) say
yes; V100 (7.0) and T4 (7.5) emulate bf16, which is slower than fp32. The capability table is NVIDIA's (CUDA
programming guide, "compute capabilities"), written out here; torch.cuda is monkeypatched, so no GPU is needed."""

from __future__ import annotations

import pytest
import torch

from richkd.engine.device import bf16_is_fast

# (GPU, compute capability, native bf16?) from NVIDIA's tables
GPUS = [("P100", (6, 0), False), ("V100", (7, 0), False), ("T4", (7, 5), False), ("A100", (8, 0), True),
        ("RTX 3090", (8, 6), True), ("L4", (8, 9), True), ("H100", (9, 0), True), ("B200", (10, 0), True)]


@pytest.mark.parametrize("name, capability, native", GPUS, ids=[g[0] for g in GPUS])
def test_bf16_is_fast_follows_cuda_capability(monkeypatch: pytest.MonkeyPatch, name: str,
                                              capability: tuple[int, int], native: bool) -> None:
    asked: list[int] = []

    def get_device_capability(index: int) -> tuple[int, int]:
        asked.append(index)
        return capability

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # emulation: yes
    assert bf16_is_fast(torch.device("cuda:0")) is native
    assert bf16_is_fast(torch.device("cuda")) is native
    assert asked == [0, 1]  # the device asked about, then the current one for a bare "cuda"


@pytest.mark.parametrize("native", [True, False])
def test_bf16_is_fast_on_rocm_asks_without_emulation(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    calls: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return native or including_emulation

    monkeypatch.setattr(torch.version, "hip", "6.2")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert bf16_is_fast(torch.device("cuda")) is native and calls == [False]


def test_bf16_is_fast_elsewhere_is_false() -> None:
    assert bf16_is_fast(torch.device("meta")) is False

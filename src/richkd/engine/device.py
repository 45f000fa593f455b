"""Check a user's device string before any work: a CPU-only torch asked for CUDA fails in one line, up front."""

from __future__ import annotations

from pathlib import Path

import torch

from richkd.errors import RichKDError

__all__ = ["bf16_is_fast", "check_device", "cpu_flags", "cuda_bf16_native"]


def check_device(spec: str, option: str = "--device") -> torch.device:
    """`torch.device(spec)` after checking this torch build and machine can run on it.

    `option` names the setting in the error (``train.device`` for configs, ``--device`` for commands).
    """
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise RichKDError(f"{option}={spec!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():  # type: ignore[no-untyped-call]
            raise RichKDError(
                f"{option}={spec} but this torch ({torch.__version__}) is a CPU-only build: use {option}=cpu, "
                "or install a CUDA build of torch"
            )
        if not torch.cuda.is_available():
            raise RichKDError(f"{option}={spec} but no CUDA device is visible: use {option}=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RichKDError(
                f"{option}={spec} but only {torch.cuda.device_count()} CUDA device(s) are visible: use cuda:0"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise RichKDError(f"{option}={spec} but MPS is not available here: use {option}=cpu")
    elif device.type != "cpu":
        raise RichKDError(f"{option}={spec}: richkd runs on cpu, cuda or mps")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up: a GPU with native bf16 (CUDA compute capability >= 8.0, Ampere
    on; on ROCm what torch reports without emulation), or a CPU with native bf16 matrix units (AMX/AVX512-BF16).

    Measured here: on an AMD EPYC without them the surrogate's image tower runs 8x slower in bf16 than in fp32,
    so "auto" must not mean "always". V100 (7.0) and T4 (7.5) have no bf16 units either: torch emulates it there.
    """
    if device.type == "cuda":
        return cuda_bf16_native(device)
    if device.type != "cpu":
        return False
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether the CUDA (or ROCm) device computes bf16 natively rather than by emulation."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.version.hip:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    major, _minor = torch.cuda.get_device_capability(index)
    return major >= 8


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags from /proc/cpuinfo (empty where there is none, e.g. not Linux/x86)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())

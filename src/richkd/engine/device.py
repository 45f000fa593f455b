"""Check a user's device string before any work: a CPU-only torch asked for CUDA fails in one line, up front."""

from __future__ import annotations

import torch

from richkd.errors import RichKDError

__all__ = ["check_device"]


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

"""Child processes die with their parent: no orphaned decode workers, DataLoader workers or DDP ranks after
the parent is killed with SIGKILL (which runs no cleanup code in the parent).

Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op, where the pools' own shutdown is all there is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits; exit now if the parent is already gone.

    `expected_parent` is the parent's pid as the parent saw itself before forking: if this process was
    re-parented before the call (the parent died in between), it exits at once instead of living on.
    """
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)

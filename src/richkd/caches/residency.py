"""Whether a cache should be loaded into memory or served from its memory-mapped files: one rule for every cache.

A cache loaded whole must leave room for everything else the run holds, so it is loaded only when it takes at
most a fraction (half, by default) of the memory available now: free GPU memory on CUDA, MemAvailable on the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["fits_in_memory", "memory_available"]


def memory_available(device: torch.device) -> int:
    """Bytes a cache could occupy on `device` now: free GPU memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def fits_in_memory(nbytes: int, device: torch.device, fraction: float = 0.5) -> bool:
    """Whether `nbytes` are at most `fraction` of the memory available on `device` now."""
    return nbytes <= fraction * memory_available(device)

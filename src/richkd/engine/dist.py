"""torch.distributed helpers (torchrun/DDP). With one process they are no-ops, so the trainer has one path."""

from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist
from torch import nn


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, NCCL on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return torch.device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    torch_dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    if not is_distributed():
        return module
    # Buffers (BN statistics, CRD memory banks) are kept consistent by the code that updates them, not by
    # re-broadcasting rank 0's copy each step (the banks alone are tens of MB).
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
    )


def mean_over_ranks(record: dict[str, float]) -> dict[str, float]:
    if not is_distributed() or not record:
        return record
    keys = sorted(record)
    values = torch.tensor([record[k] for k in keys], dtype=torch.float64)
    torch_dist.all_reduce(values)
    return {k: float(v) / world_size() for k, v in zip(keys, values, strict=True)}


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank (rank order); identity with one process."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)

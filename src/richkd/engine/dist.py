"""torch.distributed helpers (torchrun/DDP). With one process they are no-ops, so the trainer has one path.

How a run of N processes stays equal to a 1-process run with the same global batch and seed (docs/speed.md):

- every rank draws the same permutation and takes a contiguous slice of each global batch (`epoch_batches`);
- random draws that depend on the batch (crop/flip, cache views, CRD negatives) are drawn for the whole
  global batch from identically seeded generators and sliced (`rank_slice`), so row i gets the same draw as
  in one process and the generators stay in lockstep;
- each rank's loss is the mean over its equal-sized slice and DDP averages gradients, so the update is the
  global-batch mean;
- CRD memory banks are updated with the all-gathered embeddings of the whole global batch (`all_gather_cat`);
- BatchNorm: `train.sync_bn` normalises with global-batch statistics (`convert_sync_bn`; NCCL uses
  torch's SyncBatchNorm, gloo our CPU version); without it each rank normalises over its own slice and the
  running statistics are averaged over ranks after every epoch (`average_buffers`).
"""

from __future__ import annotations

import atexit
import gc
import inspect
import logging
import os
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from richkd.engine.proc import die_with_parent

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launch_rank() -> int:
    """This process's rank as torchrun assigned it (RANK, when WORLD_SIZE > 1): still right after `shutdown`,
    for the clean-up code that runs once the group has been left."""
    if is_distributed():
        return rank()
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def init_from_env(device: str) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, NCCL on CUDA.

    Only rank 0 logs at INFO (the others log warnings and errors). The caller leaves the group with `shutdown`
    on every path out (success or error); an `atexit` hook is only a backstop.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return torch.device(device)
    # On GPUs NCCL carries the CUDA tensors and gloo the few CPU ones (metric means).
    backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    die_with_parent()  # a rank whose launcher was SIGKILLed must not linger holding memory or a GPU
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    torch_dist.init_process_group(backend=backend)
    atexit.register(cleanup)
    if not is_main():
        logging.getLogger("richkd").setLevel(logging.WARNING)
    log.info("joined %s process group: %d processes", backend, world_size())
    return torch.device("cuda", local) if device.startswith("cuda") else torch.device(device)


def shutdown(*, ok: bool) -> None:
    """Leave the process group now, while the interpreter is fully alive; a no-op with one process.

    A gloo group left to interpreter exit (the `atexit` backstop below, or the garbage collector of a DDP
    wrapper that still owns it) can be torn down while Python finalises: its C++ threads may then drop the last
    tensors of finished works, which needs the GIL, and the process dies with SIGABRT ("terminate called
    without an active exception", issue 20; pytorch/pytorch#179291 describes the mechanism) after an otherwise
    complete run. So every train path calls this on the way out:

    - `ok` (every rank finished): a barrier first, so no rank closes its connections while a peer still
      communicates (rank 0 writes the checkpoint while the others are already done);
    - not `ok` (an error on this rank): no barrier, the peers may be gone or stuck; the launcher stops them.

    Unreachable owners of the group (the DDP wrapper and its reducer's finished works, kept by reference
    cycles) are collected before the group is destroyed, so nothing of gloo outlives this call.
    """
    if not is_distributed():
        return
    try:
        if ok:
            torch_dist.barrier()
    finally:
        gc.collect()
        torch_dist.destroy_process_group()
        gc.collect()


def cleanup() -> None:
    """The `atexit` backstop of `shutdown` (a path that did not call it: a bug, or an exception not caught)."""
    if is_distributed():
        gc.collect()
        torch_dist.destroy_process_group()


def wrap_ddp(module: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """DDP over `module` when distributed, else `module` unchanged.

    `find_unused_parameters` is needed when some trainable parameter never enters the loss (feature fusion
    with lambda = 0 or 1 leaves one projection unused); it costs a graph traversal per step, so it is off
    unless asked for.
    """
    if not is_distributed():
        return module
    # Buffers (BN statistics, CRD memory banks) are kept consistent by the code that updates them, not by
    # re-broadcasting rank 0's copy each step (the banks alone are tens of MB).
    ddp = nn.parallel.DistributedDataParallel
    no_buffer_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}  # newer torch, where broadcast_buffers is deprecated
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
        gradient_as_bucket_view=True,
        **no_buffer_sync,
    )


def rank_slice(n_local: int) -> slice:
    """This rank's rows of a per-sample draw made for the whole global batch (n_local rows per rank)."""
    r = rank()
    return slice(r * n_local, (r + 1) * n_local)


def mean_over_ranks(record: dict[str, float]) -> dict[str, float]:
    if not is_distributed() or not record:
        return record
    keys = sorted(record)
    values = torch.tensor([record[k] for k in keys], dtype=torch.float64)
    torch_dist.all_reduce(values)
    return {k: float(v) / world_size() for k, v in zip(keys, values, strict=True)}


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors from every rank (rank order); identity with one process."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of `tensor` over ranks (a new tensor); identity with one process. Not differentiable."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    torch_dist.all_reduce(out)
    return out / world_size()


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average every floating-point buffer (BN running mean/var) over ranks, in place.

    Without sync_bn each rank's running statistics come from its own rows; averaging them after each epoch
    (timm's `--dist-bn reduce`) makes every rank evaluate and checkpoint the same model.
    """
    if not is_distributed():
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    torch_dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        torch_dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone()
        torch_dist.all_reduce(out)
        return out


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the global batch of all ranks, for CPU/gloo (torch's SyncBatchNorm is GPU-only).

    Per-channel sums and sums of squares (float64) are all-reduced with a differentiable all_reduce, so the
    gradient flows through the global statistics as in one process. Meant for parity runs on CPU: it costs
    one collective per BatchNorm layer per step.
    Running statistics get the unbiased variance over the global count, as nn.BatchNorm2d over that batch.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        c = input.shape[1]
        # Statistics in float64, as CPU BatchNorm accumulates them; the normalisation in float32 (or float64).
        x64 = input.double()
        count = torch.full((1,), input.numel() // c, dtype=torch.float64, device=input.device)
        local = torch.cat([x64.sum(dim=(0, 2, 3)), (x64 * x64).sum(dim=(0, 2, 3)), count])  # [2C + 1]
        total: Tensor = _AllReduceSum.apply(local)  # type: ignore[no-untyped-call]
        n = total[2 * c]
        mean = total[:c] / n  # [C]
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0.0)  # biased, [C]
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 0.1 if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach().to(self.running_var.dtype), alpha=m)
        shape = (1, c, 1, 1)
        work = torch.promote_types(input.dtype, torch.float32)  # bf16 under autocast -> float32
        scale = torch.rsqrt(var + self.eps).to(work).view(shape)
        y = (input.to(work) - mean.to(work).view(shape)) * scale
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        out: Tensor = y.to(input.dtype)
        return out


def convert_sync_bn(module: nn.Module, device: torch.device) -> None:
    """In place: swap the BatchNorm2d layers inside `module` for global-batch versions when distributed
    (CUDA: torch's SyncBatchNorm; CPU: GlooSyncBatchNorm); a no-op with one process.

    Parameters and buffers are kept (the same tensors), so an optimizer built afterwards sees them as usual.
    """
    if not is_distributed():
        return
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, (nn.SyncBatchNorm, GlooSyncBatchNorm)):
            module.add_module(name, _sync_bn_like(child, device))
        else:
            convert_sync_bn(child, device)


def _sync_bn_like(bn: nn.BatchNorm2d, device: torch.device) -> nn.Module:
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlooSyncBatchNorm
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new

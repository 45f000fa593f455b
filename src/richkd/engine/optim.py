"""SGD and the learning-rate schedule as a pure function of the epoch (so resuming needs no scheduler state)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    foreach: bool,
    fused: bool = False,
) -> torch.optim.SGD:
    """SGD; `fused` (one kernel for all parameters) takes precedence over `foreach` (torch allows one)."""
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        foreach=False if fused else foreach,
        fused=fused,
    )


def lr_at(
    epoch: int,
    *,
    base_lr: float,
    epochs: int,
    schedule: str,
    milestones: Sequence[int],
    gamma: float,
    warmup_epochs: int,
) -> float:
    """Learning rate for 0-based `epoch`. Step: lr * gamma^(#milestones <= epoch), i.e. the reference's
    `lr * 0.1` *after* epochs 150/180/210 (mdistiller counts epochs from 1). Cosine: to 0 at the end."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    if schedule == "cosine":
        span = max(1, epochs - warmup_epochs)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))
    return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)


def resolve_milestones(milestones: Sequence[float], epochs: int) -> tuple[int, ...]:
    """Epochs after which the step schedule decays: a fraction f in (0, 1) is f·epochs rounded half up (at least 1),
    so a recipe's schedule follows a shorter or longer run; a value >= 1 is that epoch as given."""
    return tuple(max(1, math.floor(m * epochs + 0.5)) if m < 1 else int(m) for m in milestones)


def milestones_beyond(milestones: Sequence[int], epochs: int) -> tuple[int, ...]:
    """The milestones a run of `epochs` never reaches: their decay never happens."""
    return tuple(m for m in milestones if m >= epochs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

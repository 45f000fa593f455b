"""Curriculum temperature (CTKD): a learnable distillation temperature trained adversarially.

Li, Li, Yang, Zhang, Qian, Yang, "Curriculum Temperature for Knowledge Distillation", AAAI 2023
(https://arxiv.org/abs/2211.16231); defaults from its reference code (github.com/zhengli97/CTKD,
``models/temp_global.py`` and ``train_student.py``), global-temperature variant:

- ``T = t_start + t_range · sigmoid(GRL(θ, λ))``, θ a scalar initialised to 1 (t_start = 1, t_range = 20).
- The gradient-reversal layer is the identity forward and multiplies the incoming gradient by λ backward. λ runs
  a cosine curriculum from ``λ_max = 0`` to ``λ_min = −1`` over the first ``loops`` epochs (10), then stays at
  −1: ``λ(e) = λ_min + (λ_max − λ_min) · (cos(π · min(e, loops) / loops) + 1) / 2``, e the 1-based epoch.
  λ < 0 reverses the gradient, so the temperature *ascends* the distillation loss the student descends: a
  curriculum from easy (low-loss) to hard temperatures whose difficulty grows with |λ|.

The temperature enters the logit term everywhere T does (softmax and the T² factor), through autograd.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CurriculumTemperature", "reverse_gradient", "reversal_lambda"]


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (Ganin & Lempitsky, ICML 2015)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged forward; ``scale · ∂L/∂x`` backward (CTKD passes its λ ≤ 0 as ``scale``)."""
    out: Tensor = _GradientReversal.apply(x, scale)  # type: ignore[no-untyped-call]
    return out


def reversal_lambda(progress: float, *, period: float, lambda_max: float = 0.0, lambda_min: float = -1.0) -> float:
    """CTKD's cosine curriculum λ at ``progress`` = e / E (1-based epoch e of E); ``period`` = loops / E.

    ``λ = λ_min + (λ_max − λ_min) · (cos(π · min(progress / period, 1)) + 1) / 2``; λ = λ_min throughout when
    ``period`` is 0. The reference (``CosineDecay``) evaluates it with the 1-based epoch, as here.
    """
    if progress < 0:
        raise ValueError(f"progress must be >= 0, got {progress}")
    fraction = 1.0 if period <= 0 else min(progress / period, 1.0)
    return lambda_min + (lambda_max - lambda_min) * (math.cos(math.pi * fraction) + 1.0) / 2.0


class CurriculumTemperature(nn.Module):
    """The global learnable temperature ``T = t_start + t_range · sigmoid(GRL(θ, λ(progress)))``.

    Owned by a logit distiller (so its θ is checkpointed and optimised with the student). :meth:`log_values` gives
    the temperature and λ of the latest forward, for the per-epoch log (read once per epoch: no host sync per step).
    """

    def __init__(
        self, *, t_start: float = 1.0, t_range: float = 20.0, period: float, lambda_max: float = 0.0,
        lambda_min: float = -1.0,
    ) -> None:
        super().__init__()
        if not t_start > 0 or not t_range >= 0:
            raise ValueError(f"need t_start > 0 and t_range >= 0, got {t_start} and {t_range}")
        if not period >= 0:
            raise ValueError(f"period must be >= 0 (a fraction of training), got {period}")
        self.theta = nn.Parameter(torch.ones(()))  # the reference's Global_T: torch.ones(1)
        self.t_start, self.t_range, self.period = float(t_start), float(t_range), float(period)
        self.lambda_max, self.lambda_min = float(lambda_max), float(lambda_min)
        self._last: tuple[Tensor, float] | None = None

    def forward(self, progress: float) -> Tensor:
        lam = reversal_lambda(progress, period=self.period, lambda_max=self.lambda_max, lambda_min=self.lambda_min)
        temperature = self.t_start + self.t_range * torch.sigmoid(reverse_gradient(self.theta, lam))
        self._last = (temperature.detach(), lam)
        return temperature

    def log_values(self) -> dict[str, float]:
        """``{"ctkd/temperature": T, "ctkd/lambda": λ}`` of the latest step (empty before the first)."""
        if self._last is None:
            return {}
        return {"ctkd/temperature": float(self._last[0]), "ctkd/lambda": self._last[1]}

    def describe(self) -> str:
        return f"CTKD(T={self.t_start}+{self.t_range}*sigmoid(theta), lambda {self.lambda_max}->{self.lambda_min})"

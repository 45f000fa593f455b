"""Decoupled knowledge distillation as a distiller."""

from __future__ import annotations

from torch import Tensor

from richkd.data.batch import Batch
from richkd.distill.base import DISTILLERS, Distiller, cross_entropy_term, format_loss, require_teacher
from richkd.losses import dkd_loss
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["DKD"]


@DISTILLERS.register("dkd")
class DKD(Distiller):
    """``L = w_ce · CE + min(progress / warmup, 1) · (α · TCKD + β · NCKD)``. Keys "ce", "dkd".

    Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (https://arxiv.org/abs/2203.08679).
    mdistiller ramps the DKD term over ``warmup_epochs`` (20 of 240 on CIFAR-100, i.e. warmup = 1/12);
    here ``warmup`` is that fraction of training in ``progress`` units, and 0 disables the ramp.
    mdistiller CIFAR defaults: w_ce = 1, α = 1, β = 8, T = 4 (β per pair: ``richkd.recipes.pairs``).
    ``standardize``: z-score both logits before T (LS-DKD, Sun et al. CVPR 2024).
    """

    def __init__(
        self,
        *,
        ce_weight: float,
        alpha: float,
        beta: float,
        temperature: float,
        warmup: float,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.ce_weight, self.alpha, self.beta = self.check_weights(
            ce_weight=ce_weight, alpha=alpha, beta=beta
        )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not warmup >= 0:
            raise ValueError(f"warmup must be >= 0 (a fraction of training), got {warmup}")
        self.temperature = float(temperature)
        self.warmup = float(warmup)
        self.standardize = bool(standardize)
        self.needs_teacher = bool(self.alpha or self.beta)

    def warmup_factor(self, progress: float) -> float:
        """Linear ramp ``min(progress / warmup, 1)`` (1 when warmup is 0)."""
        if progress < 0:
            raise ValueError(f"progress must be >= 0, got {progress}")
        return 1.0 if self.warmup == 0 else min(progress / self.warmup, 1.0)

    def forward(
        self, student: ModelOutput, teacher: TeacherTargets | None, batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * cross_entropy_term(student, batch)
        if self.alpha or self.beta:
            teacher = require_teacher(teacher, "DKD")
            loss = dkd_loss(
                student.logits,
                teacher.logits,
                batch.labels,
                self.alpha,
                self.beta,
                self.logit_temperature(self.temperature, progress),
                standardize=self.standardize,
            )
            terms["dkd"] = self.warmup_factor(progress) * loss
        return terms

    def describe(self) -> str:
        ls = ", LS" if self.standardize else ""
        t = self.temperature_label(self.temperature)
        dkd = f"DKD(alpha={self.alpha}, beta={self.beta}, T={t}, warmup={self.warmup:.4g}{ls})"
        return format_loss([(self.ce_weight, "CE"), (1.0 if self.alpha or self.beta else 0.0, dkd)])

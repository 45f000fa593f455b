"""Hinton knowledge distillation as a distiller (RichKD-L when the teacher logits are fused)."""

from __future__ import annotations

from torch import Tensor

from richkd.data.batch import Batch
from richkd.distill.base import (
    DISTILLERS,
    Distiller,
    cross_entropy_term,
    format_loss,
    kd_name,
    require_teacher,
)
from richkd.losses import kd_loss
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["KD"]


@DISTILLERS.register("kd")
class KD(Distiller):
    """``L = w_ce · CE(z_S, y) + w_kd · T² · KL(softmax(z_T/T) ‖ softmax(z_S/T))``. Keys "ce", "kd".

    Hinton et al., 2015 (https://arxiv.org/abs/1503.02531); mdistiller CIFAR defaults: T = 4,
    w_ce = 0.1, w_kd = 0.9. ``teacher.logits`` may already be fused with CLIP logits (RichKD-L).
    ``standardize``: z-score both logits before the base temperature T (LS-KD, Sun et al. CVPR 2024;
    their CIFAR recipe: T = 2, w_kd = 9, w_ce = 0.1).
    """

    def __init__(
        self, *, temperature: float, kd_weight: float, ce_weight: float, standardize: bool = False
    ) -> None:
        super().__init__()
        self.ce_weight, self.kd_weight = self.check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.standardize = bool(standardize)
        self.needs_teacher = self.kd_weight > 0

    def forward(
        self, student: ModelOutput, teacher: TeacherTargets | None, batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.ce_weight:
            terms["ce"] = self.ce_weight * cross_entropy_term(student, batch)
        if self.kd_weight:
            teacher = require_teacher(teacher, "KD")
            temperature = self.logit_temperature(self.temperature, progress)
            kd = kd_loss(student.logits, teacher.logits, temperature, standardize=self.standardize)
            terms["kd"] = self.kd_weight * kd
        return terms

    def describe(self) -> str:
        kd = kd_name(self.temperature_label(self.temperature), self.standardize)
        return format_loss([(self.ce_weight, "CE"), (self.kd_weight, kd)])

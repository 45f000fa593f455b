"""Vanilla training: the student on the labels alone, ``L = w_ce · CE(z_S, y)`` (the no-KD baseline)."""

from __future__ import annotations

from torch import Tensor

from richkd.data.batch import Batch
from richkd.distill.base import DISTILLERS, Distiller, cross_entropy_term, format_loss
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["Vanilla"]


@DISTILLERS.register("vanilla")
class Vanilla(Distiller):
    """``L = w_ce · CE(z_S, y)``; needs no teacher. Key "ce"."""

    needs_teacher = False

    def __init__(self, *, ce_weight: float = 1.0) -> None:
        super().__init__()
        (self.ce_weight,) = self.check_weights(ce_weight=ce_weight)

    def forward(
        self, student: ModelOutput, teacher: TeacherTargets | None, batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        return {"ce": self.ce_weight * cross_entropy_term(student, batch)}

    def describe(self) -> str:
        return format_loss([(self.ce_weight, "CE")])

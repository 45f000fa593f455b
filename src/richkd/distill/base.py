"""The Distiller seam (ARCHITECTURE.md 6.2): one module per method, returning weighted named terms.

The trainer step never knows the method::

    terms = distiller(student_out, teacher_targets, batch, progress)   # {"ce": ..., "kd": ...}
    loss = sum(terms.values())

Terms use the keys ``ce``, ``kd``, ``dkd``, ``crd``, ``feat``, ``dist``, ``cc`` and ``bc``; each value is already
multiplied by its weight, and a term whose weight is 0 is neither computed nor present.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from richkd.data.batch import Batch
from richkd.distill.ctkd import CurriculumTemperature
from richkd.errors import RichKDError
from richkd.models.output import ModelOutput
from richkd.registry import Registry
from richkd.targets import TeacherTargets

__all__ = [
    "DISTILLERS",
    "Distiller",
    "StrongView",
    "cross_entropy_term",
    "format_loss",
    "kd_name",
    "require_teacher",
]


class Distiller(nn.Module):
    """Base class: owns its projections and memory banks (as parameters/buffers), nothing else.

    Attributes:
        needs_teacher: the forward reads ``TeacherTargets`` (else ``teacher`` may be None).
        needs_clip: the forward reads ``teacher.clip`` (feature fusion). Logit fusion happens on the
            teacher side (``FusedTargets``), so it does not set this flag.
        needs_indices: the forward reads ``batch.indices`` (CRD memory banks).
        needs_strong_view: the forward takes ``strong=StrongView(...)``: the student's output and the teacher
            targets on ``batch.strong`` (MLKD's strongly augmented view), which the trainer then builds.
    """

    needs_teacher: bool = True
    needs_clip: bool = False
    needs_indices: bool = False
    needs_strong_view: bool = False

    def forward(
        self, student: ModelOutput, teacher: TeacherTargets | None, batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        """Weighted loss terms for one step; ``progress`` ∈ [0, 1] is the fraction of training done."""
        raise NotImplementedError

    def describe(self) -> str:
        """The composed loss in one line, e.g. ``"Loss = 1.0*CE + 3.0*KD(T=3.0)"``."""
        raise NotImplementedError

    def set_curriculum_temperature(self, ctkd: CurriculumTemperature) -> None:
        """Replace the logit term's fixed T by CTKD's learnable one (registered, so it is optimised and saved)."""
        self.add_module("ctkd", ctkd)

    def logit_temperature(self, temperature: float, progress: float) -> float | Tensor:
        """The T of the logit term this step: ``temperature``, or CTKD's learnable T when one is set."""
        ctkd = self._modules.get("ctkd")
        return temperature if ctkd is None else ctkd(progress)

    def temperature_label(self, temperature: float) -> str:
        """How the logit term's T reads in ``describe()``."""
        ctkd = self._modules.get("ctkd")
        return str(temperature) if not isinstance(ctkd, CurriculumTemperature) else ctkd.describe()

    def log_values(self) -> dict[str, float]:
        """Values to log once per epoch in metrics.jsonl (CTKD's temperature and λ); empty by default."""
        ctkd = self._modules.get("ctkd")
        return ctkd.log_values() if isinstance(ctkd, CurriculumTemperature) else {}

    @staticmethod
    def check_weights(**weights: float) -> tuple[float, ...]:
        """Validate loss weights (finite, >= 0, not all zero); return them as floats, in order."""
        for name, value in weights.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not any(weights.values()):
            raise ValueError(f"all loss weights are zero ({', '.join(weights)}): nothing to train")
        return tuple(float(v) for v in weights.values())


DISTILLERS: Registry[type[Distiller]] = Registry("distiller")


class StrongView(NamedTuple):
    """The second view a two-view distiller (MLKD) reads: the student and the teacher side on ``batch.strong``."""

    student: ModelOutput
    teacher: TeacherTargets | None


def cross_entropy_term(student: ModelOutput, batch: Batch) -> Tensor:
    """Unweighted ``CE(z_S, y)``, batch mean, in float32."""
    return F.cross_entropy(student.logits.float(), batch.labels)


def require_teacher(teacher: TeacherTargets | None, method: str) -> TeacherTargets:
    if teacher is None:
        raise RichKDError(f"{method} needs teacher targets, but none were given (is a teacher configured?)")
    return teacher


def format_loss(parts: list[tuple[float, str]]) -> str:
    """``[(1.0, "CE"), (0.0, "KD"), (3.0, "X")]`` -> ``"Loss = 1.0*CE + 3.0*X"`` (zero weights dropped)."""
    return "Loss = " + " + ".join(f"{weight}*{name}" for weight, name in parts if weight)


def kd_name(temperature: float | str, standardize: bool) -> str:
    """How a KD term reads in ``describe()``: ``KD(T=4.0)``, or ``LS-KD(T=2.0)`` with logit standardisation."""
    return f"{'LS-' if standardize else ''}KD(T={temperature})"

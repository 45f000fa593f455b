"""A feature term added to any logit distiller: "KD + AT", "DKD + fusion + FitNet", "RichKD-L + VID".

The logit distiller keeps its own terms and its teacher side (`fusion.mode` acts on the logit targets only); the
feature term reads the plain teacher's stage maps or pooled features and is logged under its own key.
"""

from __future__ import annotations

from torch import Tensor

from richkd.data.batch import Batch
from richkd.distill.base import Distiller, StrongView, require_teacher
from richkd.distill.features.base import FeatureTerm
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["WithFeature"]


class WithFeature(Distiller):
    """``L = L_base + w · L_feature``; the feature term's key is its method name (e.g. ``"at"``)."""

    def __init__(self, base: Distiller, term: FeatureTerm, *, weight: float, key: str) -> None:
        super().__init__()
        (self.weight,) = self.check_weights(**{f"{key} weight": weight})
        if key in ("ce", "kd", "dkd", "crd", "feat"):
            raise ValueError(f"feature term key {key!r} collides with a logit distiller's term")
        self.base = base
        self.term = term
        self.key = key
        self.needs_teacher = True
        self.needs_clip = base.needs_clip
        self.needs_indices = base.needs_indices
        self.needs_strong_view = base.needs_strong_view

    def forward(
        self,
        student: ModelOutput,
        teacher: TeacherTargets | None,
        batch: Batch,
        progress: float,
        strong: StrongView | None = None,
    ) -> dict[str, Tensor]:
        """The feature term reads the weak (plain-augmented) view only, as the reference feature methods do."""
        extra = {} if strong is None else {"strong": strong}
        terms: dict[str, Tensor] = self.base(student, teacher, batch, progress, **extra)
        term = self.term(student, require_teacher(teacher, self.term.label))
        ramp = self.term.ramp(progress)
        terms[self.key] = self.weight * (term if ramp == 1.0 else ramp * term)
        return terms

    def log_values(self) -> dict[str, float]:
        return self.base.log_values()

    def describe(self) -> str:
        return f"{self.base.describe()} + {self.weight:g}*{self.term.label}"

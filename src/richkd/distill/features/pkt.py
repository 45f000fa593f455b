"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, https://arxiv.org/abs/1803.10837).

Cosine similarities of the pooled features within the batch, mapped to [0, 1] and row-normalised into
conditional probabilities P (teacher) and Q (student); L = mean_ij P_ij log((P_ij + ε)/(Q_ij + ε)), ε = 1e-7.
mdistiller: weight 30000, CE 1.
"""

from __future__ import annotations

from torch import Tensor

from richkd.distill.features.base import (
    FEATURE_TERMS,
    FeatureOptions,
    FeatureTerm,
    FeatureTermSpec,
    teacher_pooled,
)
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["PKT", "pkt_loss"]


def _conditional(f: Tensor, eps: float) -> Tensor:
    f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
    f = f.nan_to_num(nan=0.0)
    similarity = (f @ f.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(student_pooled: Tensor, teacher_pooled: Tensor, eps: float = 1e-7) -> Tensor:
    q, p = _conditional(student_pooled.to(teacher_pooled.dtype), eps), _conditional(teacher_pooled, eps)
    return (p * ((p + eps) / (q + eps)).log()).mean()


class PKT(FeatureTerm):
    label = "PKT"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        return pkt_loss(student.pooled, teacher_pooled(teacher, "PKT"))


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return PKT()


FEATURE_TERMS.register("pkt")(
    FeatureTermSpec(_build, default_weight=30000.0, paper="Passalis & Tefas, ECCV 2018", taps="pooled")
)

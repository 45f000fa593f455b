"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, https://arxiv.org/abs/1612.03928).

Per stage j ≥ 1: Q = vec(mean_c |A_c|^p) L2-normalised; L = Σ_j mean((Q_S^j − Q_T^j)²), the larger map pooled to
the smaller. mdistiller: p = 2, weight 1000, CE 1. No trainable parameters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from richkd.distill.features.base import (
    FEATURE_TERMS,
    FeatureOptions,
    FeatureTerm,
    FeatureTermSpec,
    match_spatial,
    teacher_stages,
)
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["AT", "at_loss"]


def _attention(f: Tensor, p: float) -> Tensor:
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1))


def at_loss(student_maps: tuple[Tensor, ...], teacher_maps: tuple[Tensor, ...], p: float) -> Tensor:
    total = teacher_maps[0].new_zeros(())
    for f_s, f_t in zip(student_maps, teacher_maps, strict=False):
        f_s, f_t = match_spatial(f_s.to(f_t.dtype), f_t)
        total = total + (_attention(f_s, p) - _attention(f_t, p)).pow(2).mean()
    return total


class AT(FeatureTerm):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.label = f"AT(p={self.p:g})"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        return at_loss(student.stages[1:], teacher_stages(teacher, "AT")[1:], self.p)


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return AT(opts.at_p)


FEATURE_TERMS.register("at")(
    FeatureTermSpec(_build, default_weight=1000.0, paper="Zagoruyko & Komodakis, ICLR 2017", taps="stages[1:]")
)

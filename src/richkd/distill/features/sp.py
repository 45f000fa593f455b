"""Similarity-preserving KD (Tung & Mori, ICCV 2019, https://arxiv.org/abs/1907.09682).

G = row-L2-normalised Gram matrix F Fᵀ of the last stage map flattened per sample (B × B);
L = ‖G_T − G_S‖²_F / B². mdistiller: last stage, weight 3000, CE 1.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from richkd.distill.features.base import (
    FEATURE_TERMS,
    FeatureOptions,
    FeatureTerm,
    FeatureTermSpec,
    teacher_stages,
)
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["SP", "sp_loss"]


def _gram(f: Tensor) -> Tensor:
    flat = f.reshape(f.shape[0], -1)
    return F.normalize(flat @ flat.t())


def sp_loss(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    batch = student_map.shape[0]
    return (_gram(teacher_map) - _gram(student_map.to(teacher_map.dtype))).pow(2).sum() / (batch * batch)


class SP(FeatureTerm):
    label = "SP"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        return sp_loss(student.stages[-1], teacher_stages(teacher, "SP")[-1])


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return SP()


FEATURE_TERMS.register("sp")(
    FeatureTermSpec(_build, default_weight=3000.0, paper="Tung & Mori, ICCV 2019", taps="stages[-1]")
)

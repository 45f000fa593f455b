"""Relational KD (Park et al., CVPR 2019, https://arxiv.org/abs/1904.05068) on the pooled features.

Distance term: pairwise Euclidean distances, each side divided by its mean non-zero distance, compared with
smooth-L1. Angle term: cosines of the angles ∠(e_i − e_j, e_k − e_j) for all triplets, smooth-L1.
L = w_d · L_dist + w_a · L_angle. mdistiller: w_d 25, w_a 50, ε 1e-12, not squared, weight 1, CE 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

__all__ = ["RKD", "rkd_loss"]


def _pairwise_distance(e: Tensor, squared: bool, eps: float) -> Tensor:
    square = e.pow(2).sum(1)
    d = (square.unsqueeze(1) + square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))  # zero diagonal


def _normalised_distance(e: Tensor, squared: bool, eps: float) -> Tensor:
    d = _pairwise_distance(e, squared, eps)
    return d / d[d > 0].mean()


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [B, B, D]: e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(
    student_pooled: Tensor,
    teacher_pooled: Tensor,
    *,
    distance_weight: float,
    angle_weight: float,
    squared: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    s = student_pooled.to(teacher_pooled.dtype).reshape(len(student_pooled), -1)
    t = teacher_pooled.reshape(len(teacher_pooled), -1)
    with torch.no_grad():
        t_dist, t_angle = _normalised_distance(t, squared, eps), _angles(t)
    loss_d = F.smooth_l1_loss(_normalised_distance(s, squared, eps), t_dist)
    loss_a = F.smooth_l1_loss(_angles(s), t_angle)
    return distance_weight * loss_d + angle_weight * loss_a


class RKD(FeatureTerm):
    def __init__(self, distance_weight: float, angle_weight: float, squared: bool, eps: float) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.squared, self.eps = bool(squared), float(eps)
        self.label = f"RKD(d={self.distance_weight:g}, a={self.angle_weight:g})"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        return rkd_loss(
            student.pooled,
            teacher_pooled(teacher, "RKD"),
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
            squared=self.squared,
            eps=self.eps,
        )


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return RKD(opts.rkd_distance_weight, opts.rkd_angle_weight, opts.rkd_squared, opts.rkd_eps)


FEATURE_TERMS.register("rkd")(
    FeatureTermSpec(_build, default_weight=1.0, paper="Park et al., CVPR 2019", taps="pooled")
)

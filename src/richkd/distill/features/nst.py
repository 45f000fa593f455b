"""Neuron selectivity transfer (Huang & Wang, 2017, https://arxiv.org/abs/1707.01219): squared MMD with a
polynomial kernel k(a, b) = (aᵀb)² between the channels' spatial activation patterns.

Per stage j ≥ 1, with f = each channel's map flattened and L2-normalised over space:
L_j = mean k(f_T, f_T) + mean k(f_S, f_S) − 2 mean k(f_S, f_T); L = Σ_j L_j. mdistiller: weight 50, CE 1.
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
    match_spatial,
    teacher_stages,
)
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["NST", "nst_loss"]


def _poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """[B, C_a, N], [B, C_b, N] -> [B, C_b, C_a] of (a_i · b_j)², as one batched matmul (mdistiller's broadcast
    product materialises [B, C_b, C_a, N] first: 6.9x a KD step at resnet32x4 -> resnet8x4 on 2 CPU cores)."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(student_maps: tuple[Tensor, ...], teacher_maps: tuple[Tensor, ...]) -> Tensor:
    total = teacher_maps[0].new_zeros(())
    for f_s, f_t in zip(student_maps, teacher_maps, strict=False):
        f_s, f_t = match_spatial(f_s.to(f_t.dtype), f_t)
        s = F.normalize(f_s.flatten(2), dim=2)
        t = F.normalize(f_t.flatten(2), dim=2)
        total = total + _poly_kernel(t, t).mean().detach() + _poly_kernel(s, s).mean() - 2 * _poly_kernel(s, t).mean()
    return total


class NST(FeatureTerm):
    label = "NST"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        return nst_loss(student.stages[1:], teacher_stages(teacher, "NST")[1:])


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return NST()


FEATURE_TERMS.register("nst")(
    FeatureTermSpec(_build, default_weight=50.0, paper="Huang & Wang, arXiv 2017", taps="stages[1:]")
)

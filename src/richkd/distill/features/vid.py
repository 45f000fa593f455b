"""Variational information distillation (Ahn et al., CVPR 2019, https://arxiv.org/abs/1904.05835).

Per stage j ≥ 1 a Gaussian q(t | s) with mean μ(s) (three 1×1 convs, ReLU between) and a per-channel variance
σ²_c = softplus(α_c) + ε: L = Σ_j mean[½ ((t − μ(s))² / σ² + log σ²)], the larger map pooled to the smaller.
mdistiller: init σ² = 5, ε = 1e-5, weight 1, CE 1. Difference, on purpose: mdistiller keeps α in a plain list, so
its variances never train; here they are parameters (as in the authors' code), 448 more for resnet32x4→8x4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.distill.features.base import (
    FEATURE_TERMS,
    FeatureOptions,
    FeatureTerm,
    FeatureTermSpec,
    match_spatial,
    teacher_stages,
)
from richkd.errors import RichKDError
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["VID", "vid_stage_loss"]


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


def vid_stage_loss(mean: Tensor, target: Tensor, log_scale: Tensor, eps: float) -> Tensor:
    """½ mean((t − μ)² / σ² + log σ²) with σ² = softplus(α) + ε per channel."""
    variance = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target) ** 2 / variance + variance.log())).mean()


class VID(FeatureTerm):
    label = "VID"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, init_pred_var: float, eps: float) -> None:
        super().__init__()
        if not init_pred_var > eps > 0:
            raise RichKDError("feature.vid_init_pred_var must be > feature.vid_eps > 0")
        pairs = list(zip(student.stages[1:], teacher.stages[1:], strict=False))
        self.eps = float(eps)
        self.regressors = nn.ModuleList(
            nn.Sequential(_conv1x1(s[0], t[0]), nn.ReLU(), _conv1x1(t[0], t[0]), nn.ReLU(), _conv1x1(t[0], t[0]))
            for s, t in pairs
        )
        alpha = math.log(math.expm1(init_pred_var - eps))  # softplus(alpha) + eps = init_pred_var
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((t[0],), alpha)) for _, t in pairs)

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        maps_t = teacher_stages(teacher, "VID")[1:]
        total = maps_t[0].new_zeros(())
        for regressor, log_scale, f_s, f_t in zip(
            self.regressors, self.log_scales, student.stages[1:], maps_t, strict=False
        ):
            f_s, f_t = match_spatial(f_s.to(f_t.dtype), f_t)
            total = total + vid_stage_loss(regressor(f_s), f_t, log_scale, self.eps)
        return total


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return VID(student, teacher, opts.vid_init_pred_var, opts.vid_eps)


FEATURE_TERMS.register("vid")(
    FeatureTermSpec(_build, default_weight=1.0, paper="Ahn et al., CVPR 2019", taps="stages[1:]")
)

"""FitNet (Romero et al., ICLR 2015, https://arxiv.org/abs/1412.6550): a regressor maps the student's hint-layer
map onto the teacher's, L = MSE(r(F_S^h), F_T^h).

Connector as mdistiller's ConvReg: stride-2 3x3 conv when the student map is twice the teacher's size, a 4x4
transposed conv when half, else a (1 + H_S − H_T)-wide conv; then BatchNorm and ReLU. mdistiller: hint layer 2,
weight 100, CE 1.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from richkd.distill.features.base import (
    FEATURE_TERMS,
    FeatureOptions,
    FeatureTerm,
    FeatureTermSpec,
    teacher_stages,
)
from richkd.errors import RichKDError
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["ConvRegressor", "FitNet"]


class ConvRegressor(nn.Module):
    """Student map [B, C_s, H_s, W_s] -> teacher map shape [B, C_t, H_t, W_t] (mdistiller's ConvReg)."""

    def __init__(self, student: tuple[int, int, int], teacher: tuple[int, int, int], use_relu: bool = True) -> None:
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = student, teacher
        self.conv: nn.Module
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise RichKDError(f"no FitNet connector from a {s_h}x{s_w} student map to a {t_h}x{t_w} teacher map")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class FitNet(FeatureTerm):
    label = "FitNet"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, hint_layer: int) -> None:
        super().__init__()
        n = min(len(student.stages), len(teacher.stages))
        if not 0 <= hint_layer < n:
            raise RichKDError(f"feature.hint_layer must be in [0, {n - 1}] for these models (got {hint_layer})")
        self.hint_layer = hint_layer
        self.regressor = ConvRegressor(student.stages[hint_layer], teacher.stages[hint_layer])
        self.label = f"FitNet(hint={hint_layer})"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        f_t = teacher_stages(teacher, "FitNet")[self.hint_layer]
        return F.mse_loss(self.regressor(student.stages[self.hint_layer].to(f_t.dtype)), f_t)


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return FitNet(student, teacher, opts.hint_layer)


FEATURE_TERMS.register("fitnet")(
    FeatureTermSpec(_build, default_weight=100.0, paper="Romero et al., ICLR 2015", taps="stage[hint_layer]")
)

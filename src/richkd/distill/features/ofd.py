"""Overhaul of feature distillation (Heo et al., ICCV 2019, https://arxiv.org/abs/1904.01866).

The student's pre-ReLU stage maps go through a connector (1×1 conv + BN) onto the teacher's pre-ReLU maps; the
teacher's negative responses are replaced by a per-channel margin m_c = E[x | x < 0] for x ~ N(μ_c, σ_c²), the
BN before the teacher's ReLU (μ = bias, σ = |weight|): m = μ − σ·φ(μ/σ)/Φ(−μ/σ), and −3σ when Φ(−μ/σ) ≤ 0.001
(mdistiller's rule). Partial L2 (mdistiller's `feat_loss`):

    d = (s − m)²·[s > m, t ≤ m] + (s − t)²·[s > t, m < t ≤ 0] + (s − t)²·[t > 0],   L_j = Σ_{c,h,w} mean_b d

(the teacher pooled to the connector's output size), L = Σ_j L_j / 2^(n−j−1) over the last n aligned stages of
`preact_stages[1:]`. mdistiller: weight 0.001 (CIFAR-100), CE 1, kernel 1. Difference, on purpose: mdistiller's
OFD puts the teacher in train mode (its `train()` override forgets `teacher.eval()`); here the teacher stays in
eval mode like every other method's.
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
    student_preacts,
    teacher_preacts,
)
from richkd.errors import RichKDError
from richkd.models.base import BNStats, FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["OFD", "connector_conv_bn", "ofd_loss", "ofd_margin"]

_TAIL = 0.001  # mdistiller: below this Φ(−μ/σ), the margin is −3σ


def ofd_margin(stats: BNStats) -> Tensor:
    """Per-channel margin [C] (float64) from the BN statistics; σ = 0 takes the limit min(μ, 0)."""
    mean = stats.mean.detach().double()
    std = stats.std.detach().double().abs()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    z = mean / safe
    tail = torch.special.ndtr(-z)  # Φ(−μ/σ)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    conditional = mean - safe * pdf / tail.clamp_min(torch.finfo(torch.float64).tiny)
    margin = torch.where(tail > _TAIL, conditional, -3 * std)
    return torch.where(std > 0, margin, mean.clamp_max(0.0))


def ofd_loss(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """mdistiller's partial L2 between connector output `source` and teacher `target` [B, C, H, W], margin [C]."""
    m = margin.to(source).view(1, -1, 1, 1)
    loss = (
        (source - m) ** 2 * ((source > m) & (target <= m))
        + (source - target) ** 2 * ((source > target) & (target > m) & (target <= 0))
        + (source - target) ** 2 * (target > 0)
    )
    return loss.abs().mean(dim=0).sum()


def connector_conv_bn(s_channels: int, t_channels: int) -> nn.Sequential:
    """1×1 conv (no bias) + BN, mdistiller's init: conv N(0, 2/(k·k·C_out)), BN weight 1, bias 0."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))
    bn = nn.BatchNorm2d(t_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


class OFD(FeatureTerm):
    label = "OFD"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes) -> None:
        super().__init__()
        s_maps, t_maps = student.stages[1:], teacher.stages[1:]
        if len(teacher.bn_before_relu) != len(t_maps):
            raise RichKDError("OFD needs the teacher's BN statistics before each stage's ReLU; this teacher has none "
                              "(e.g. a ConvNeXt or ViT): use another feature method (at, fitnet, reviewkd, ...)")
        self.n = min(len(s_maps), len(t_maps))
        if self.n < 1:
            raise RichKDError("OFD needs at least one stage map after the stem on both models")
        s_maps, t_maps = s_maps[-self.n :], t_maps[-self.n :]
        self.connectors = nn.ModuleList(connector_conv_bn(s[0], t[0]) for s, t in zip(s_maps, t_maps, strict=True))
        for i, stats in enumerate(teacher.bn_before_relu[-self.n :]):
            # float32 as mdistiller's FloatTensor; a buffer, so it follows the term's device and dtype
            self.register_buffer(f"margin{i}", ofd_margin(stats).float(), persistent=False)

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.n)]

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        f_t = teacher_preacts(teacher, "OFD")[1:][-self.n :]
        f_s = student_preacts(student, "OFD")[1:][-self.n :]
        total = f_t[0].new_zeros(())
        for i, (connector, s, t, margin) in enumerate(zip(self.connectors, f_s, f_t, self.margins(), strict=True)):
            source = connector(s.to(t.dtype))
            target = F.adaptive_avg_pool2d(t, source.shape[-2:]).detach()
            total = total + ofd_loss(source, target, margin) / 2 ** (self.n - i - 1)
        return total


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return OFD(student, teacher)


FEATURE_TERMS.register("ofd")(
    FeatureTermSpec(_build, default_weight=0.001, paper="Heo et al., ICCV 2019", taps="preact_stages[1:]")
)

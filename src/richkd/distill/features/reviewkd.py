"""ReviewKD (Chen et al., CVPR 2021, https://arxiv.org/abs/2104.09044): knowledge review by attention-based fusion
(ABF) of the student's levels, deepest first, and the hierarchical context loss (HCL) against the teacher's.

Levels: the student's stage maps `stages[1:]` (or `preact_stages[1:]`) plus its pooled features as a 1×1 map;
the teacher's `preact_stages[1:]` plus its pooled features; the last n = min(#levels) of each are paired. An ABF
maps a student level to the teacher level's channels and size: 1×1 conv + BN to `mid` channels, fused with the
upsampled (nearest) residual of the deeper level by a 2-channel sigmoid attention (all but the deepest), resized
(nearest) to the teacher's size, then 3×3 conv + BN. HCL per level: (MSE + Σ_l 2^-k·MSE(pool_l)) / (1 + Σ 2^-k)
over l ∈ {4, 2, 1} below the map's height. L = Σ levels; the term ramps as min(progress / warmup, 1).

mdistiller hard-codes channels and shapes per pair (resnet32x4→resnet8x4: in/out [64, 128, 256, 256], mid 256,
shapes [1, 8, 16, 32]); here they come from the two shape tables, mid = min(512, student pooled width).
mdistiller: weight 5 (CIFAR-100 reviewkd.yaml; 1 in its defaults), 20 warm-up epochs, CE 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.distill.features.base import (
    FEATURE_TERMS,
    FeatureOptions,
    FeatureTerm,
    FeatureTermSpec,
    student_preacts,
    teacher_pooled,
    teacher_preacts,
)
from richkd.errors import RichKDError
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["ABF", "ReviewKD", "hcl_loss"]

Shape = tuple[int, int, int]


def hcl_loss(students: list[Tensor], teachers: list[Tensor]) -> Tensor:
    """Hierarchical context loss summed over paired levels [B, C, H, W]."""
    total = students[0].new_zeros(())
    for fs, ft in zip(students, teachers, strict=True):
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        weight, norm = 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            norm += weight
        total = total + loss / norm
    return total


class ABF(nn.Module):
    """One attention-based fusion step (mdistiller's ABF; same init: Kaiming-uniform a=1 on both convs)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        reduce = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        expand = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        nn.init.kaiming_uniform_(reduce.weight, a=1)
        nn.init.kaiming_uniform_(expand.weight, a=1)
        self.conv1 = nn.Sequential(reduce, nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(expand, nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(output at the teacher's size, the fused map passed on as the next level's residual)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            assert residual is not None
            x = self._fuse(x, residual)
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x

    def _fuse(self, x: Tensor, residual: Tensor) -> Tensor:
        """x·z0 + up(r)·z1 with z = σ(W·[x, up(r)] + b), up = nearest resize of r to x's size, as mdistiller's ABF,
        without building [x, up(r)] or up(r) at full size: a 1×1 conv splits over the concatenation
        (W·[x, u] = W_x·x + W_r·u) and commutes with any nearest resize (both act per pixel), so W_r runs at r's
        size; when x's size is a whole multiple of r's, up(r)·z1 is a broadcast over the replicated pixels.
        Exact up to float rounding (tests/test_ofd_reviewkd.py checks it against the formula written out); the
        full-size tensors it skips are what made ReviewKD's step cost more than its FLOPs (benchmarks/)."""
        n, c, h, w = x.shape
        rh, rw = residual.shape[-2:]
        assert self.att_conv is not None
        conv = self.att_conv[0]
        assert isinstance(conv, nn.Conv2d)
        weight, bias = conv.weight, conv.bias
        att_r = F.conv2d(residual, weight[:, c:])
        if (rh, rw) != (h, w):
            att_r = F.interpolate(att_r, (h, w), mode="nearest")
        z = torch.sigmoid(F.conv2d(x, weight[:, :c], bias) + att_r)
        if h % rh == 0 and w % rw == 0:
            sh, sw = h // rh, w // rw
            scaled = residual.view(n, c, rh, 1, rw, 1) * z[:, 1:].view(n, 1, rh, sh, rw, sw)
            return x * z[:, :1] + scaled.view(n, c, h, w)
        up = F.interpolate(residual, (h, w), mode="nearest")
        return x * z[:, :1] + up * z[:, 1:]


class ReviewKD(FeatureTerm):
    label = "ReviewKD"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> None:
        super().__init__()
        if not opts.reviewkd_warmup >= 0:
            raise RichKDError("feature.reviewkd_warmup_epochs must be >= 0")
        if opts.reviewkd_max_mid_channel < 1:
            raise RichKDError("feature.reviewkd_max_mid_channel must be >= 1")
        s_levels: list[Shape] = [*student.stages[1:], (student.pooled, 1, 1)]
        t_levels: list[Shape] = [*teacher.stages[1:], (teacher.pooled, 1, 1)]
        self.n = min(len(s_levels), len(t_levels))
        s_levels, t_levels = s_levels[-self.n :], t_levels[-self.n :]
        mid = min(opts.reviewkd_max_mid_channel, s_levels[-1][0])
        self.out_sizes = [(t[1], t[2]) for t in t_levels]
        # built shallow -> deep as mdistiller, stored deepest first (the order they run in)
        abfs = [ABF(s[0], mid, t[0], i < self.n - 1) for i, (s, t) in enumerate(zip(s_levels, t_levels, strict=True))]
        self.abfs = nn.ModuleList(abfs[::-1])
        self.student_preact = opts.reviewkd_student_preact
        self.warmup = float(opts.reviewkd_warmup)
        self.label = f"ReviewKD(warmup={self.warmup:.3g})"  # a fraction of training

    def ramp(self, progress: float) -> float:
        return 1.0 if self.warmup == 0 else min(progress / self.warmup, 1.0)

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        t_pooled = teacher_pooled(teacher, "ReviewKD")
        maps = student_preacts(student, "ReviewKD") if self.student_preact else student.stages
        dtype = t_pooled.dtype
        s_levels = [*maps[1:], student.pooled[:, :, None, None]][-self.n :]
        t_levels = [*teacher_preacts(teacher, "ReviewKD")[1:], t_pooled[:, :, None, None]][-self.n :]
        outputs: list[Tensor] = []
        residual: Tensor | None = None
        for abf, x, size in zip(self.abfs, s_levels[::-1], self.out_sizes[::-1], strict=True):
            out, residual = abf(x.to(dtype), residual, size)
            outputs.insert(0, out)
        return hcl_loss(outputs, [t.detach() for t in t_levels])


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return ReviewKD(student, teacher, opts)


FEATURE_TERMS.register("reviewkd")(
    FeatureTermSpec(
        _build, default_weight=5.0, paper="Chen et al., CVPR 2021", taps="stages[1:]+pooled"
    )
)

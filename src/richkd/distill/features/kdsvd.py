"""KD via singular value decomposition (Lee et al., ECCV 2018, https://arxiv.org/abs/1807.06819).

Each stage map [B, C, H, W] is read as B matrices of (C·H) × W; the teacher's top-k right singular vectors
(scaled by its normalised singular values) and the student's top-(k+3), sign-aligned to the teacher's, describe
each stage. Between consecutive stages, RBF correlations exp(−(v_j − v_{j−1})² / 8) are matched:
L = Σ_j ‖R_S^j − R_T^j‖² / B. mdistiller: k = 1, weight 1, CE 1. Extension: where a cross-family pair's maps differ
in size, the larger is average-pooled to the smaller first (AT's rule; mdistiller fails there); equal sizes are
untouched.
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
from richkd.errors import RichKDError
from richkd.models.base import FeatureShapes
from richkd.models.output import ModelOutput
from richkd.targets import TeacherTargets

__all__ = ["KDSVD", "kdsvd_loss"]


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _svd(feat: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Normalised top-n singular values [B, n] and right singular vectors [B, W, n] of [B, C·H, W]."""
    b, c, h, w = feat.shape
    _, s, vh = torch.linalg.svd(feat.reshape(b, c * h, w).to(torch.promote_types(feat.dtype, torch.float32)),
                                 full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(-2, -1))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def _align(a: Tensor, b: Tensor) -> Tensor:
    """Pick and sign-flip a's columns to match b's best-matching ones (mdistiller's align_rsv)."""
    cosine = a.transpose(-2, -1) @ b
    best = cosine.abs().amax(1, keepdim=True)
    mask = torch.where(best == cosine.abs(), cosine.sign(), torch.zeros_like(cosine))
    return a @ mask


def kdsvd_loss(student_maps: tuple[Tensor, ...], teacher_maps: tuple[Tensor, ...], k: int) -> Tensor:
    losses = []
    prev_s: Tensor | None = None
    prev_t: Tensor | None = None
    for f_s, f_t in zip(student_maps, teacher_maps, strict=False):
        f_s, f_t = match_spatial(f_s.to(f_t.dtype), f_t)
        s_t, v_t = _svd(f_t, k)
        _, v_s = _svd(f_s, k + 3)
        v_s = _align(v_s, v_t)
        scale = s_t.unsqueeze(1)
        v_t, v_s = v_t * scale, v_s * scale
        if prev_s is not None and prev_t is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / 8)
            losses.append(_finite((rbf_s - rbf_t.detach()).pow(2)).sum())
        prev_s, prev_t = v_s, v_t
    batch = student_maps[0].shape[0]
    return torch.stack(losses).sum() / batch if losses else teacher_maps[0].new_zeros(())


class KDSVD(FeatureTerm):
    def __init__(self, k: int) -> None:
        super().__init__()
        if k < 1:
            raise RichKDError(f"feature.kdsvd_k must be >= 1 (got {k})")
        self.k = k
        self.label = f"KDSVD(k={k})"

    def forward(self, student: ModelOutput, teacher: TeacherTargets) -> Tensor:
        return kdsvd_loss(student.stages[1:], teacher_stages(teacher, "KDSVD")[1:], self.k)


def _build(student: FeatureShapes, teacher: FeatureShapes, opts: FeatureOptions) -> FeatureTerm:
    return KDSVD(opts.kdsvd_k)


FEATURE_TERMS.register("kdsvd")(
    FeatureTermSpec(_build, default_weight=1.0, paper="Lee et al., ECCV 2018", taps="stages[1:]")
)

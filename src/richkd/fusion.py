"""Cross-modal teacher fusion (RichKD, METHOD.md §3-§4).

Mansourian, Babaei, Kasaei, "Enriching Knowledge Distillation with Cross-Modal Teacher Fusion",
CVPR 2026 Findings (https://arxiv.org/abs/2511.09286).

- :func:`fuse_logits` is parameter-free and runs on the teacher side, so every logit distiller
  (KD, DKD, ...) consumes fused targets unchanged.
- :class:`FeatureFusion` owns trainable projections, so it lives inside a distiller (as the teacher-side
  embedding of CRD) and is checkpointed with it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["fuse_logits", "FeatureFusion"]


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def fuse_logits(teacher_logits: Tensor, vlm_logits: Tensor, alpha: float, vlm_scale: float = 1.0) -> Tensor:
    """Logit fusion ``z_F = α · z_T + (1 − α) · s · z_C`` on raw logits, before any temperature.

    Args:
        teacher_logits: ``[B, C]`` task-teacher logits z_T.
        vlm_logits: ``[B, C]`` vision-language logits or raw cosines z_C (class order as the teacher's).
        alpha: α ∈ [0, 1]; the reference uses 0.7.
        vlm_scale: s, the vision-language logit scale; the reference feeds raw cosines (s = 1),
            standard CLIP zero-shot uses 100.
    """
    _check_unit_interval("alpha", alpha)
    if teacher_logits.shape != vlm_logits.shape:
        raise ValueError(
            f"teacher and vision-language logits differ in shape: {tuple(teacher_logits.shape)} "
            f"vs {tuple(vlm_logits.shape)}"
        )
    if alpha == 1.0:
        return teacher_logits
    return alpha * teacher_logits + (1.0 - alpha) * vlm_scale * vlm_logits


class FeatureFusion(nn.Module):
    """Feature fusion ``f_F = normalize(λ · normalize(P_T f_T) + (1 − λ) · normalize(P_C f_C))``.

    Teacher (e.g. 256-d) and CLIP (e.g. 768-d) features live in different spaces, so, as the RichKD
    reference code does, each is projected by a trainable Linear (P_T, P_C) into an ``embed_dim`` space and
    L2-normalised; the convex combination is L2-normalised again. λ (``feature_lambda``) = 1 uses the
    teacher only and never evaluates P_C; λ = 0 uses CLIP only and never evaluates P_T.

    Args:
        teacher_dim: D_t, width of the teacher's pooled features.
        clip_dim: E, width of the vision-language image embedding.
        embed_dim: shared projection width (128 in CRD and RichKD).
        feature_lambda: λ ∈ [0, 1]; the reference ties it to α = 0.7.
    """

    def __init__(
        self, *, teacher_dim: int, clip_dim: int, embed_dim: int = 128, feature_lambda: float
    ) -> None:
        super().__init__()
        _check_unit_interval("feature_lambda", feature_lambda)
        self.feature_lambda = float(feature_lambda)
        self.teacher_proj = nn.Linear(teacher_dim, embed_dim)  # P_T
        self.clip_proj = nn.Linear(clip_dim, embed_dim)  # P_C

    def forward(self, teacher_pooled: Tensor, clip_image_emb: Tensor) -> Tensor:
        """``[B, D_t]``, ``[B, E]`` -> ``[B, embed_dim]`` unit-norm fused embedding (float32)."""
        lam = self.feature_lambda
        if lam == 1.0:
            return _project(self.teacher_proj, teacher_pooled)
        clip_emb = _project(self.clip_proj, clip_image_emb)  # [B, embed_dim]
        if lam == 0.0:
            return clip_emb
        teacher_emb = _project(self.teacher_proj, teacher_pooled)  # [B, embed_dim]
        return F.normalize(lam * teacher_emb + (1.0 - lam) * clip_emb, dim=1)

    def extra_repr(self) -> str:
        return f"feature_lambda={self.feature_lambda}"


def _project(proj: nn.Linear, features: Tensor) -> Tensor:
    """Linear projection then L2 normalisation, in float32 (caches may hold fp16 embeddings)."""
    return F.normalize(proj(features.to(proj.weight.dtype)).float(), dim=1)

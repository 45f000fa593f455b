"""What a distiller may read from the teacher side (ARCHITECTURE.md 6.2)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ClipTargets(NamedTuple):
    cosines: Tensor  # [B, C] unscaled image-class cosine; the logit scale is a fusion hyperparameter
    image_emb: Tensor  # [B, E] L2-normalised vision-language image embedding


class TeacherTargets(NamedTuple):
    logits: Tensor  # [B, C] already fused when a vision-language term is in play
    pooled: Tensor | None  # [B, D_t] conventional teacher pooled features
    clip: ClipTargets | None  # raw vision-language outputs, for feature fusion
    stages: tuple[Tensor, ...] | None = None  # the teacher's stage maps (online teacher only), for feature terms
    preact_stages: tuple[Tensor, ...] | None = None  # the same before their ReLU (online teacher only): OFD, ReviewKD

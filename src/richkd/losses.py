"""Pure logit-distillation losses (no modules, no state).

Every function computes in float32, whatever the input dtype or autocast context: a KL divergence
between two softened distributions loses most of its signal in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss", "dkd_loss", "dkd_terms", "standardize_logits"]

# mdistiller masks the target class out of the non-target distribution by subtracting this
# constant from the (temperature-scaled) target logit; exp(-1000) is exactly 0 in float32.
_TARGET_MASK_OFFSET = 1000.0
# Logit standardisation divides by (eps + std), as the reference code does (std with Bessel's correction).
_LS_EPS = 1e-7


def standardize_logits(logits: Tensor) -> Tensor:
    """Z-score each row: ``(z − mean(z)) / (1e-7 + std(z))``, std over classes with Bessel's correction.

    Sun, Ren, Li, Wang, Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024
    (https://arxiv.org/abs/2403.01427), exactly as its reference code's ``normalize``. Applied to student and
    teacher logits before the (base) temperature, it lets the student match the teacher's logit *relations*
    instead of their magnitude. Scale-invariant: ``standardize(a·z) = standardize(z)`` for a > 0 (up to eps),
    so under it the α·z_T control equals the plain teacher.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (_LS_EPS + z.std(dim=1, keepdim=True))


def _prepare(student_logits: Tensor, teacher_logits: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    if standardize:
        return standardize_logits(student_logits), standardize_logits(teacher_logits)
    return student_logits.float(), teacher_logits.float()


def _check_temperature(temperature: float | Tensor) -> None:
    if isinstance(temperature, Tensor):
        return  # a learned T (CTKD) is > 0 by construction; checking it would sync the host every step
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must both be [B, C] with the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor, *, standardize: bool = False
) -> Tensor:
    """Hinton knowledge distillation: ``T² · mean_b KL(softmax(z_t/T) ‖ softmax(z_s/T))``.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2015
    (https://arxiv.org/abs/1503.02531). The T² factor keeps gradient magnitudes comparable across
    temperatures. KL is summed over classes and averaged over the batch (mdistiller's ``kd_loss``).

    Args:
        student_logits: ``[B, C]`` raw student logits z_s.
        teacher_logits: ``[B, C]`` raw teacher logits z_t (possibly already fused with CLIP logits).
        temperature: T > 0 (the *base* temperature when ``standardize``); a 0-dim tensor for a learned T (CTKD),
            whose gradient then flows through both the softmax and the T² factor.
        standardize: z-score both logits first (:func:`standardize_logits`; LS-KD).

    Returns:
        A scalar float32 tensor.
    """
    _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    student, teacher = _prepare(student_logits, teacher_logits, standardize)
    student_log_probs = F.log_softmax(student / temperature, dim=1)  # [B, C]
    teacher_log_probs = F.log_softmax(teacher / temperature, dim=1)  # [B, C]
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    return kl.sum(dim=1).mean() * temperature**2


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float | Tensor,
    *,
    standardize: bool = False,
) -> tuple[Tensor, Tensor]:
    """The two unweighted parts of Decoupled KD, ``(TCKD, NCKD)``, each already multiplied by T².

    Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022
    (https://arxiv.org/abs/2203.08679); formula exactly as mdistiller's ``dkd_loss``:

    - p = softmax(z/T) for student and teacher; b = [p_target, 1 − p_target] (binary split).
      ``TCKD = T² · Σ_b KL(b_t ‖ b_s) / B``.
    - p̂ = softmax(z/T − 1000·1[target]) — the target class masked out, leaving the distribution over
      the non-target classes. ``NCKD = T² · Σ_b KL(p̂_t ‖ p̂_s) / B``.

    Args:
        student_logits: ``[B, C]``; teacher_logits: ``[B, C]``; target: ``[B]`` int64 class ids.
        temperature: T > 0 (the base temperature when ``standardize``).
        standardize: z-score both logits first (:func:`standardize_logits`; LS-DKD).
    """
    _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    if target.shape != student_logits.shape[:1]:
        raise ValueError(f"target must be [B]={student_logits.shape[0]}, got {tuple(target.shape)}")
    batch_size = student_logits.shape[0]
    student, teacher = _prepare(student_logits, teacher_logits, standardize)
    student_scaled = student / temperature  # [B, C]
    teacher_scaled = teacher / temperature  # [B, C]
    gt_mask = F.one_hot(target, student_logits.shape[1]).to(student_scaled.dtype)  # [B, C]

    student_probs = F.softmax(student_scaled, dim=1)
    teacher_probs = F.softmax(teacher_scaled, dim=1)
    student_binary = _binary_split(student_probs, gt_mask)  # [B, 2]
    teacher_binary = _binary_split(teacher_probs, gt_mask)  # [B, 2]
    tckd = F.kl_div(torch.log(student_binary), teacher_binary, reduction="sum")
    tckd = tckd * temperature**2 / batch_size

    student_nontarget_log = F.log_softmax(student_scaled - _TARGET_MASK_OFFSET * gt_mask, dim=1)
    teacher_nontarget = F.softmax(teacher_scaled - _TARGET_MASK_OFFSET * gt_mask, dim=1)
    nckd = F.kl_div(student_nontarget_log, teacher_nontarget, reduction="sum")
    nckd = nckd * temperature**2 / batch_size
    return tckd, nckd


def _binary_split(probs: Tensor, gt_mask: Tensor) -> Tensor:
    """``[B, C]`` probabilities -> ``[B, 2]`` = [p_target, Σ non-target] (mdistiller ``cat_mask``)."""
    p_target = (probs * gt_mask).sum(dim=1, keepdim=True)
    p_other = (probs * (1.0 - gt_mask)).sum(dim=1, keepdim=True)
    return torch.cat([p_target, p_other], dim=1)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    temperature: float | Tensor,
    *,
    standardize: bool = False,
) -> Tensor:
    """Decoupled KD: ``α · TCKD + β · NCKD`` (see :func:`dkd_terms` for both terms).

    Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (https://arxiv.org/abs/2203.08679).
    mdistiller's CIFAR-100 defaults are α = 1, β = 8, T = 4.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature, standardize=standardize)
    return alpha * tckd + beta * nckd

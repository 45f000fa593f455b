"""Agreement between two predictors on the same rows: top-1 agreement and KL divergence (T = 1). Pure torch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["top1_agreement", "mean_kl"]


def _check(reference_logits: Tensor, other_logits: Tensor) -> None:
    if reference_logits.dim() != 2 or reference_logits.shape != other_logits.shape:
        raise ValueError(
            f"need two [N, C] logits of one shape, got {tuple(reference_logits.shape)}, {tuple(other_logits.shape)}"
        )
    if reference_logits.shape[0] == 0:
        raise ValueError("agreement over an empty set is undefined")


def top1_agreement(reference_logits: Tensor, other_logits: Tensor) -> float:
    """Percent of rows where both predictors' argmax agree, ``100 · mean(argmax z_ref = argmax z_other)``.

    Used for student–teacher fidelity (Stanton et al., "Does Knowledge Distillation Really Work?", NeurIPS
    2021, https://arxiv.org/abs/2106.05945), independent of the labels.
    """
    _check(reference_logits, other_logits)
    same = reference_logits.argmax(dim=1) == other_logits.argmax(dim=1)
    return 100.0 * same.float().mean().item()


def mean_kl(reference_logits: Tensor, other_logits: Tensor) -> float:
    """Mean over rows of KL(p_ref ‖ p_other) = Σ_c p_ref,c (log p_ref,c − log p_other,c), in nats, at T = 1.

    The direction is the one KD minimises (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
    Network", 2015, https://arxiv.org/abs/1503.02531): reference = teacher. Computed from log-softmax, so
    confident predictions do not underflow.
    """
    _check(reference_logits, other_logits)
    log_p = F.log_softmax(reference_logits.double(), dim=1)
    log_q = F.log_softmax(other_logits.double(), dim=1)
    return float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))

"""Classification metrics over ``[N, C]`` logits and ``[N]`` labels (pure torch, no state).

All are computed in float32 on whatever device the inputs live on; results are Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["topk_accuracy", "nll", "expected_calibration_error", "confidence_quadrants"]


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"need logits [N, C] and labels [N], got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("metrics over an empty set are undefined")


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent, ``{k: 100 · mean(y ∈ top-k(z))}``; k is capped at the class count."""
    _check(logits, labels)
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {list(ks)}")
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices  # [N, max_k]
    hits = top == labels.unsqueeze(1)  # [N, max_k]
    return {k: 100.0 * hits[:, : min(k, max_k)].any(dim=1).float().mean().item() for k in ks}


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood ``−mean log softmax(z)_y`` (nats)."""
    _check(logits, labels)
    return F.cross_entropy(logits.float(), labels).item()


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|, as a fraction in [0, 1].

    Confidence is the max softmax probability; bins are ``n_bins`` equal-width intervals (lo, hi] of
    [0, 1] (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
    https://arxiv.org/abs/1706.04599). Empty bins contribute nothing.
    """
    _check(logits, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence, predicted = F.softmax(logits.float(), dim=1).max(dim=1)  # [N], [N]
    correct = (predicted == labels).float()
    # Bin b holds confidences in (b/n, (b+1)/n]; ceil(c·n) − 1 maps c to its bin.
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp_(0, n_bins - 1)  # [N]
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return ((acc_sum - conf_sum).abs().sum() / logits.shape[0]).item()


def confidence_quadrants(logits: Tensor, labels: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Fractions of samples in correct/wrong × confident/unconfident (RichKD paper, Fig. 1).

    Confident means max softmax probability ≥ ``threshold`` (τ). Keys: ``confident_correct``,
    ``unconfident_correct``, ``confident_wrong``, ``unconfident_wrong``; the four sum to 1.
    """
    _check(logits, labels)
    confidence, predicted = F.softmax(logits.float(), dim=1).max(dim=1)
    correct = predicted == labels
    confident = confidence >= threshold
    n = float(logits.shape[0])
    return {
        "confident_correct": (confident & correct).sum().item() / n,
        "unconfident_correct": (~confident & correct).sum().item() / n,
        "confident_wrong": (confident & ~correct).sum().item() / n,
        "unconfident_wrong": (~confident & ~correct).sum().item() / n,
    }

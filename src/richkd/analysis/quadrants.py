"""Confidence quadrants (RichKD paper, Fig. 1) and the flows of samples between them for two predictors.

Each sample is correct or wrong (argmax = label) and confident or unconfident (max softmax probability ≥ τ).
Pure torch, no files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["STATES", "sample_states", "quadrant_fractions", "flow_counts"]

# Index order of the states; also the row/column order of flow matrices (docs/analysis_formats.md).
STATES = ("confident_correct", "unconfident_correct", "unconfident_wrong", "confident_wrong")


def sample_states(logits: Tensor, labels: Tensor, tau: float = 0.5) -> Tensor:
    """int64 [N]: each sample's index into :data:`STATES` at threshold τ (confident ⇔ max softmax ≥ τ)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, C] and labels [N], got {tuple(logits.shape)}, {tuple(labels.shape)}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    confidence, predicted = F.softmax(logits.float(), dim=1).max(dim=1)
    correct = predicted == labels
    confident = confidence >= tau
    # correct: confident -> 0, unconfident -> 1; wrong: unconfident -> 2, confident -> 3
    return torch.where(correct, (~confident).long(), 2 + confident.long())


def quadrant_fractions(states: Tensor) -> dict[str, float]:
    """Fraction of samples in each state (keys in :data:`STATES` order; they sum to 1)."""
    if states.numel() == 0:
        raise ValueError("quadrants of an empty set are undefined")
    counts = torch.bincount(states, minlength=len(STATES))
    n = float(states.numel())
    return {name: int(c) / n for name, c in zip(STATES, counts, strict=True)}


def flow_counts(states_from: Tensor, states_to: Tensor) -> list[list[int]]:
    """4 × 4 counts: entry [i][j] = samples in state i under the first predictor and j under the second.

    Both predictors must score the same rows in the same order (see ``predictions.check_comparable``).
    """
    if states_from.shape != states_to.shape:
        raise ValueError(f"flows need the same rows, got {tuple(states_from.shape)} and {tuple(states_to.shape)}")
    k = len(STATES)
    counts = torch.bincount(states_from * k + states_to, minlength=k * k).view(k, k)
    return [[int(v) for v in row] for row in counts]

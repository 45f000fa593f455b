"""Inter-class consistency: are a predictor's non-target probabilities semantically sensible? (METHOD.md §9)

Pure torch, no files. Three pieces:

- :func:`non_target_matrix` — the class-correlation matrix M of a predictor: M[c, j] = mean over the samples
  of true class c of p(j | x, j ≠ c), the probability of class j renormalised over the non-target classes.
  Why renormalise per sample (DKD's non-target distribution, Zhao et al. CVPR 2022, https://arxiv.org/abs/
  2203.08679) rather than average raw probabilities: every sample then counts once, whatever its confidence,
  so the few wrong or unsure samples (whose non-target mass is large) do not decide the matrix alone; and the
  shape of the non-target distribution is exactly what KD's "dark knowledge" transfers. Computed as the
  softmax of the logits with the target masked to −∞, so it stays exact when p_target ≈ 1 in float32.
- :func:`semantic_spearman` / :func:`reference_spearman` — Spearman rank correlation of M's off-diagonal
  entries with the cosine similarity of the class-name text embeddings, or with a reference predictor's M.
- :func:`mean_class_logits` and :func:`class_difference` — the mdistiller visualisation (tools/visualizations/
  correlation.ipynb in megvii-research/mdistiller, used in the DKD paper): per-true-class mean of the raw
  logits, and |M_T − M_S| with the diagonal zeroed, for the teacher–student heat map.

A class with no sample in the split has a NaN row; rank correlations skip the pairs it touches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "non_target_matrix",
    "mean_class_logits",
    "class_difference",
    "semantic_similarity",
    "spearman",
    "semantic_spearman",
    "reference_spearman",
]


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, C] and labels [N], got {tuple(logits.shape)}, {tuple(labels.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("inter-class consistency needs at least 2 classes")


def _per_class_mean(values: Tensor, labels: Tensor) -> Tensor:
    """[C, C] float64: row c = mean of `values` [N, C] over the rows labelled c (NaN when there are none)."""
    c = values.shape[1]
    onehot = F.one_hot(labels, c).double()  # [N, C]; one matmul is far faster than index_add_ in float64
    sums = onehot.t() @ values.double()  # [C, C]
    counts = onehot.sum(dim=0).unsqueeze(1)  # [C, 1]
    return sums / counts  # 0/0 = NaN for absent classes


def non_target_matrix(logits: Tensor, labels: Tensor) -> Tensor:
    """[C, C] float64 M: M[c, j] = mean_{i: y_i = c} softmax(z_i with z_{i,c} = −∞)_j; M[c, c] = 0.

    Each row of a present class sums to 1 over j ≠ c (see the module docstring for why per-sample
    renormalisation); rows of classes without samples are NaN.
    """
    _check(logits, labels)
    masked = logits.double().scatter(1, labels.unsqueeze(1), float("-inf"))  # [N, C]
    return _per_class_mean(F.softmax(masked, dim=1), labels)  # exp(−∞) = 0 puts exact zeros on the diagonal


def mean_class_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """[C, C] float64: row c = mean raw logit vector over the samples of true class c (mdistiller's matrix)."""
    _check(logits, labels)
    return _per_class_mean(logits, labels)


def class_difference(reference: Tensor, other: Tensor) -> Tensor:
    """|reference − other| with the diagonal set to 0: mdistiller's teacher–student heat map of two [C, C] matrices.

    mdistiller further divides by a fixed max_diff (3.0) to share one colour scale between plots; that is a
    plotting choice left to the report.
    """
    if reference.shape != other.shape or reference.dim() != 2 or reference.shape[0] != reference.shape[1]:
        raise ValueError(f"need two [C, C] matrices, got {tuple(reference.shape)} and {tuple(other.shape)}")
    diff = (reference.double() - other.double()).abs()
    diff.fill_diagonal_(0.0)
    return diff


def semantic_similarity(class_emb: Tensor) -> Tensor:
    """[C, C] float64 cosine similarity of the class embeddings [C, E] (e.g. prompt-ensembled text embeddings)."""
    if class_emb.dim() != 2:
        raise ValueError(f"class embeddings must be [C, E], got {tuple(class_emb.shape)}")
    emb = F.normalize(class_emb.double(), dim=1)
    return emb @ emb.t()


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties sharing the mean of the ranks they span."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()  # rank of the last element of each tied group
    ranks: Tensor = (last - (counts.double() - 1) / 2)[inverse]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float | None:
    """Spearman's ρ = Pearson correlation of the average ranks of x and y (C. Spearman, "The proof and
    measurement of association between two things", Am. J. Psychol. 1904). None when fewer than 3 pairs or
    either side is constant (ρ is undefined)."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs paired values, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() < 3:
        return None
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(torch.sqrt((rx * rx).sum() * (ry * ry).sum()))
    if denominator == 0.0:
        return None
    return float((rx * ry).sum()) / denominator


def semantic_spearman(matrix: Tensor, similarity: Tensor) -> float | None:
    """ρ between the symmetrised class matrix (M + Mᵀ)/2 and the class-name similarity, over unordered pairs.

    Similarity is symmetric, so each class pair {c, j} enters once: its mutual confusability against how
    alike the two names are for the text encoder. Pairs touching a class without samples are skipped.
    """
    if matrix.shape != similarity.shape or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"need two [C, C] matrices, got {tuple(matrix.shape)} and {tuple(similarity.shape)}")
    sym = (matrix.double() + matrix.double().t()) / 2
    i, j = torch.triu_indices(matrix.shape[0], matrix.shape[1], offset=1)
    a, b = sym[i, j], similarity.double()[i, j]
    keep = torch.isfinite(a) & torch.isfinite(b)
    return spearman(a[keep], b[keep])


def reference_spearman(matrix: Tensor, reference: Tensor) -> float | None:
    """ρ between the off-diagonal entries (ordered pairs c ≠ j) of two predictors' class matrices.

    Both matrices are asymmetric (row = true class), so all C(C − 1) ordered pairs are compared.
    """
    if matrix.shape != reference.shape or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"need two [C, C] matrices, got {tuple(matrix.shape)} and {tuple(reference.shape)}")
    off = ~torch.eye(matrix.shape[0], dtype=torch.bool)
    a, b = matrix.double()[off], reference.double()[off]
    keep = torch.isfinite(a) & torch.isfinite(b)
    return spearman(a[keep], b[keep])

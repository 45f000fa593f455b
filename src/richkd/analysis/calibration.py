"""Calibration metrics over ``[N, C]`` logits and ``[N]`` labels: ECE, adaptive ECE, classwise ECE, reliability bins.

Pure torch, no state, no files. Probabilities are softmax(logits) at T = 1, in float32; results are Python
floats (fractions in [0, 1]). Equal-width bins are the intervals (b/n, (b+1)/n] (confidence 0 joins the first
bin), exactly as :func:`richkd.analysis.metrics.expected_calibration_error`, so :func:`ece` here and that
function give the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from richkd.analysis.metrics import expected_calibration_error

__all__ = [
    "ReliabilityBins",
    "ece",
    "adaptive_ece",
    "classwise_ece",
    "reliability_bins",
    "equal_width_bin",
]


def _check(logits: Tensor, labels: Tensor, n_bins: int) -> None:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, C] and labels [N], got {tuple(logits.shape)}, {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("calibration over an empty set is undefined")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")


def equal_width_bin(values: Tensor, n_bins: int) -> Tensor:
    """Bin index of each value in [0, 1]: bin b holds (b/n, (b+1)/n], so ceil(v·n) − 1 (0 joins bin 0)."""
    return (torch.ceil(values * n_bins).long() - 1).clamp_(0, n_bins - 1)


def _confidence_correct(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    confidence, predicted = F.softmax(logits.float(), dim=1).max(dim=1)  # [N], [N]
    return confidence, (predicted == labels).float()


def ece(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)| over ``n_bins`` equal-width confidence bins.

    Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017
    (https://arxiv.org/abs/1706.04599). The same function as ``analysis.metrics.expected_calibration_error``.
    """
    _check(logits, labels, n_bins)
    return expected_calibration_error(logits, labels, n_bins=n_bins)


def adaptive_ece(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Adaptive (equal-mass) top-label ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|.

    Samples are sorted by confidence and cut into ``n_bins`` bins of equal count (sizes differ by at most one,
    the larger bins first, like ``numpy.array_split``), so every bin holds data even when confidences pile up
    near 1, where equal-width ECE puts almost all samples in its last bin. Nixon, Dusenberry, Zhang, Jerfel,
    Tran, "Measuring Calibration in Deep Learning", CVPR-W 2019 (https://arxiv.org/abs/1904.01685) introduce
    adaptive binning; this top-label form is their ACE restricted to the predicted class ("AdaECE" in Mukhoti
    et al., NeurIPS 2020). Ties in confidence may fall on both sides of a bin boundary. With N < n_bins, each
    sample is its own bin.
    """
    _check(logits, labels, n_bins)
    confidence, correct = _confidence_correct(logits, labels)
    n = confidence.shape[0]
    order = torch.argsort(confidence, stable=True)
    k = min(n_bins, n)
    # the first n mod k bins get one extra sample, as numpy.array_split does
    sizes = torch.full((k,), n // k, dtype=torch.long)
    sizes[: n % k] += 1
    bins = torch.repeat_interleave(torch.arange(k), sizes)  # [N] bin of each sorted position
    conf_sum = torch.bincount(bins, weights=confidence[order].double(), minlength=k)
    acc_sum = torch.bincount(bins, weights=correct[order].double(), minlength=k)
    return float((acc_sum - conf_sum).abs().sum() / n)


def classwise_ece(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Classwise ECE = (1/K) Σ_k Σ_b (|B_{k,b}| / N) · |freq(B_{k,b}) − conf(B_{k,b})|.

    For each class k, every sample's probability p_k is put in one of ``n_bins`` equal-width bins; freq is the
    fraction of the bin's samples whose label is k, conf the bin's mean p_k. Unlike top-label ECE it also
    judges the non-target probabilities, which is what distillation transfers. Kull, Perello-Nieto, Kängsepp,
    Silva Filho, Song, Flach, "Beyond temperature scaling: obtaining well-calibrated multiclass probabilities
    with Dirichlet calibration", NeurIPS 2019 (https://arxiv.org/abs/1910.12656); Nixon et al. 2019 call it
    SCE (static calibration error).
    """
    _check(logits, labels, n_bins)
    probs = F.softmax(logits.float(), dim=1)  # [N, K]
    n, k = probs.shape
    onehot = F.one_hot(labels, k).double()  # [N, K]
    # flat index class·n_bins + bin, so one bincount bins every class at once
    index = (torch.arange(k).unsqueeze(0) * n_bins + equal_width_bin(probs, n_bins)).flatten()  # [N·K]
    conf_sum = torch.bincount(index, weights=probs.double().flatten(), minlength=k * n_bins)
    freq_sum = torch.bincount(index, weights=onehot.flatten(), minlength=k * n_bins)
    return float((freq_sum - conf_sum).abs().sum() / (n * k))


@dataclass(frozen=True)
class ReliabilityBins:
    """A reliability diagram: per equal-width confidence bin, its sample count, accuracy and mean confidence.

    ``accuracy`` and ``confidence`` are fractions in [0, 1] (so they share the diagram's axis) and None for
    empty bins. ``bin_edges`` has n_bins + 1 values from 0 to 1.
    """

    bin_edges: list[float]
    count: list[int]
    accuracy: list[float | None]
    confidence: list[float | None]

    def ece(self) -> float:
        """Σ_b (count_b / N) · |accuracy_b − confidence_b|: the ECE these bins show."""
        n = sum(self.count)
        return sum(
            c * abs(a - m) for c, a, m in zip(self.count, self.accuracy, self.confidence, strict=True)
            if a is not None and m is not None
        ) / n

    def to_json(self) -> dict[str, list[float] | list[int] | list[float | None]]:
        return {"bin_edges": self.bin_edges, "count": self.count, "accuracy": self.accuracy,
                "confidence": self.confidence}


def reliability_bins(logits: Tensor, labels: Tensor, n_bins: int = 15) -> ReliabilityBins:
    """The data of a reliability diagram (Guo et al. 2017, Fig. 1) on the same bins as :func:`ece`."""
    _check(logits, labels, n_bins)
    confidence, correct = _confidence_correct(logits, labels)
    bins = equal_width_bin(confidence, n_bins)
    count = torch.bincount(bins, minlength=n_bins)
    conf_sum = torch.bincount(bins, weights=confidence.double(), minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct.double(), minlength=n_bins)
    counts = [int(c) for c in count]
    return ReliabilityBins(
        bin_edges=[b / n_bins for b in range(n_bins + 1)],
        count=counts,
        accuracy=[float(a) / c if c else None for a, c in zip(acc_sum, counts, strict=True)],
        confidence=[float(s) / c if c else None for s, c in zip(conf_sum, counts, strict=True)],
    )

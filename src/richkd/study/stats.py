"""Seed statistics of a study: mean, sample standard deviation and the paired t-interval (pure Python + scipy).

A paired comparison takes, for each seed both arms finished, the difference arm − reference; seeds fix the
initialisation and data order, so pairing removes the part of the noise the two runs share. The 95 % interval is
mean ± t(0.975, n − 1) · s / √n, and an effect is called "beyond seed noise" only when that interval excludes 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

__all__ = ["BEYOND", "TOO_FEW", "WITHIN", "Interval", "mean", "paired_differences", "sample_std", "t_interval",
           "t_quantile", "verdict"]

BEYOND, WITHIN, TOO_FEW = "beyond seed noise", "within seed noise", "too few seeds (n < 2)"


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return statistics.fmean(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Standard deviation with n − 1 in the denominator; None for a single value (no spread from one seed)."""
    return statistics.stdev(values) if len(values) >= 2 else None


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (e.g. t(0.975, 2) = 4.303)."""
    if df < 1 or not 0.0 < p < 1.0:
        raise ValueError(f"t quantile needs df >= 1 and 0 < p < 1, got df={df}, p={p}")
    return float(student_t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """Mean of n values and its two-sided t confidence interval."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval | None:
    """The t-interval of the mean of `values`; None when there are fewer than two (no spread to measure)."""
    n = len(values)
    if n < 2:
        return None
    m, s = mean(values), statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * s / math.sqrt(n)
    return Interval(n=n, mean=m, low=m - half, high=m + half, confidence=confidence)


def paired_differences(values: Mapping[int, float | None], reference: Mapping[int, float | None]) -> dict[int, float]:
    """value − reference for every seed measured in both (missing or None values are skipped), by seed."""
    return {seed: float(v) - float(r) for seed in sorted(values)
            if (v := values[seed]) is not None and (r := reference.get(seed)) is not None}


def verdict(interval: Interval | None) -> str:
    """"beyond seed noise" iff the interval excludes 0."""
    if interval is None:
        return TOO_FEW
    return BEYOND if interval.excludes_zero() else WITHIN

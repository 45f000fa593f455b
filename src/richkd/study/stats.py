"""Seed statistics of a study: mean, sample standard deviation, the paired t-interval and t-test, Cohen's d_z with
its exact interval, and Holm's step-down correction (pure Python + scipy).

A paired comparison takes, for each seed both arms finished, the difference arm − reference; seeds fix the
initialisation and data order, so pairing removes the part of the noise the two runs share. The 95 % interval is
mean ± t(0.975, n − 1) · s / √n. A study makes many such comparisons (210 in one of ours), so an uncorrected 5 %
test calls about one in twenty beyond noise by chance: only the spec's declared headline comparisons get a
verdict, after Holm's correction over that family; the rest are reported as exploratory, uncorrected.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import ndtr
from scipy.stats import chi, nct
from scipy.stats import t as student_t

__all__ = ["BEYOND", "BEYOND_HOLM", "EXPLORATORY_EXCLUDES", "EXPLORATORY_INCLUDES", "NO_PAIRS", "NO_SPREAD",
           "TOO_FEW", "WITHIN", "WITHIN_HOLM", "Interval", "PairedTest", "cohens_dz_interval", "holm", "mean",
           "noncentral_t_cdf", "paired_differences", "paired_t_test", "sample_std", "t_interval", "t_quantile",
           "verdict"]

BEYOND, WITHIN, TOO_FEW = "beyond seed noise", "within seed noise", "too few seeds (n < 2)"
# verdicts of a headline comparison (after Holm's correction) and labels of an exploratory one (no correction)
BEYOND_HOLM, WITHIN_HOLM = "beyond seed noise (Holm)", "within seed noise (Holm)"
EXPLORATORY_EXCLUDES = "exploratory (uncorrected): 95 % interval excludes 0"
EXPLORATORY_INCLUDES = "exploratory (uncorrected): 95 % interval includes 0"
NO_PAIRS, NO_SPREAD = "no paired seeds", "no spread in the differences (untestable)"


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
    """"beyond seed noise" iff the interval excludes 0 (one comparison on its own; a family needs `holm`)."""
    if interval is None:
        return TOO_FEW
    return BEYOND if interval.excludes_zero() else WITHIN


@dataclass(frozen=True)
class PairedTest:
    """Two-sided one-sample t-test of paired differences against 0 (the paired t-test): t = mean / (s / √n) with
    n − 1 degrees of freedom; `p` is None when the differences have no spread (s = 0: t is undefined)."""

    n: int
    t: float | None
    df: int
    p: float | None


def paired_t_test(differences: Sequence[float]) -> PairedTest | None:
    """The paired t-test of `differences`; None with fewer than two (no spread to test against)."""
    n = len(differences)
    if n < 2:
        return None
    s = statistics.stdev(differences)
    if s == 0.0:
        return PairedTest(n=n, t=None, df=n - 1, p=None)
    t = mean(differences) / (s / math.sqrt(n))
    return PairedTest(n=n, t=t, df=n - 1, p=float(min(1.0, 2.0 * student_t.sf(abs(t), n - 1))))


def cohens_dz_interval(differences: Sequence[float], confidence: float = 0.95) -> Interval | None:
    """Cohen's d_z = mean / s of paired differences (the standardised effect of a paired design) and its exact
    interval: t = d_z·√n follows a noncentral t with n − 1 df and noncentrality δ·√n, so the bounds are the δ whose
    noncentral t puts t at its (1 ± confidence)/2 quantiles (Steiger & Fouladi 1997). None with fewer than two
    differences or none of them different (s = 0)."""
    n = len(differences)
    if n < 2 or statistics.stdev(differences) == 0.0:
        return None
    d = mean(differences) / statistics.stdev(differences)
    t_obs, df, root_n = d * math.sqrt(n), n - 1, math.sqrt(n)

    def bound(tail: float) -> float:
        """The noncentrality δ·√n at which P(T <= t_obs) = tail; cdf falls as the noncentrality grows."""
        def excess(nc: float) -> float:
            return noncentral_t_cdf(t_obs, df, nc) - tail

        span = max(10.0, 2.0 * abs(t_obs))
        low, high = t_obs - span, t_obs + span
        while excess(low) < 0.0:
            low -= span
        while excess(high) > 0.0:
            high += span
        return float(brentq(excess, low, high, xtol=1e-10))

    alpha = 1.0 - confidence
    return Interval(n=n, mean=d, low=bound(1.0 - alpha / 2.0) / root_n, high=bound(alpha / 2.0) / root_n,
                    confidence=confidence)


def noncentral_t_cdf(t: float, df: int, nc: float) -> float:
    """P(T <= t) for T = (Z + nc) / sqrt(V / df), Z standard normal, V chi-squared with df degrees of freedom.

    scipy's `nct.cdf` where it is finite; deep in the tail it returns NaN (t = −9.2, nc = 9.2, df = 2, a
    comparison in our studies), and there the definition is integrated instead: the mean over W = sqrt(V) ~ chi(df)
    of Φ(t·W/sqrt(df) − nc), by quadrature with the step of Φ marked as a break point.
    """
    value = float(nct.cdf(t, df, nc))
    if math.isfinite(value):
        return value
    root, log_norm = math.sqrt(df), (df / 2.0 - 1.0) * math.log(2.0) + math.lgamma(df / 2.0)

    def integrand(w: float) -> float:
        if w <= 0.0:
            return 0.0
        return float(ndtr(t * w / root - nc)) * math.exp((df - 1) * math.log(w) - w * w / 2.0 - log_norm)

    top = float(chi.isf(1e-17, df))
    step = [min(max(nc * root / t, 1e-9), 0.999 * top)] if t != 0.0 else None
    return float(quad(integrand, 0.0, top, points=step, limit=200, epsabs=1e-15, epsrel=1e-10)[0])


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given. With the m p-values sorted ascending,
    p(1) <= ... <= p(m): adjusted p(i) = max over j <= i of min(1, (m − j + 1)·p(j)); a hypothesis is rejected at
    family-wise level α iff its adjusted p <= α. A None (a comparison that could not be tested) still counts in m,
    as p = 1, so declaring a comparison that then lacks seeds does not loosen the others; its result stays None."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: 1.0 if pvalues[i] is None else float(pvalues[i] or 0.0))
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = pvalues[i]
        running = max(running, min(1.0, (m - rank) * (1.0 if p is None else p)))
        adjusted[i] = None if p is None else running
    return adjusted

"""Statistics of a study, in pure Python (no scipy): mean and sample standard deviation over seeds, and the
paired difference to the baseline variant with a confidence interval from Student's t distribution.

The t quantile inverts the t CDF, written with the regularised incomplete beta function
``F(t; nu) = 1 - I_x(nu / 2, 1 / 2) / 2`` for ``t >= 0``, ``x = nu / (nu + t^2)`` (Abramowitz & Stegun
26.7.1 with 26.5.27); ``I_x`` is evaluated by its continued fraction (A&S 26.5.8, modified Lentz).
Checked against printed tables: ``t_quantile(0.975, 2) = 4.303``, ``t_quantile(0.975, 4) = 2.776``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["t_cdf", "t_quantile", "mean_std", "PairedDifference", "paired_difference", "regularized_beta"]


def _beta_continued_fraction(a: float, b: float, x: float, max_terms: int = 300, eps: float = 1e-15) -> float:
    """Continued fraction of ``I_x(a, b)`` (A&S 26.5.8), by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``, ``a, b > 0``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # the fraction converges fast below the mean; above it use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """``P(T <= t)`` for Student's t with ``dof`` degrees of freedom."""
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    tail = 0.5 * regularized_beta(dof / (dof + t * t), dof / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, dof) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1`` in the denominator; NaN for one value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass
class PairedDifference:
    """``variant - baseline`` over the seeds both finished: mean, sample std, and the two-sided CI."""

    seeds: list[int]
    differences: list[float]
    mean: float
    std: float
    confidence: float
    low: float  # NaN with fewer than 2 pairs
    high: float

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def excludes_zero(self) -> bool | None:
        """True when 0 lies outside the interval, False inside, None without an interval."""
        if math.isnan(self.low) or math.isnan(self.high):
            return None
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {"seeds": self.seeds, "differences": self.differences, "n": self.n, "mean": self.mean,
                "std": clean(self.std), "confidence": self.confidence, "ci": [clean(self.low), clean(self.high)],
                "excludes_zero": self.excludes_zero}


def paired_difference(variant: dict[int, float], baseline: dict[int, float],
                      confidence: float = 0.95) -> PairedDifference | None:
    """Paired ``variant[seed] - baseline[seed]`` over the seeds present in both (None if there is none).

    Interval: ``mean +- t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)`` (the paired t interval).
    """
    seeds = [seed for seed in variant if seed in baseline]
    if not seeds:
        return None
    differences = [variant[seed] - baseline[seed] for seed in seeds]
    mean, std = mean_std(differences)
    low = high = math.nan
    if len(differences) >= 2:
        half = t_quantile(0.5 + confidence / 2.0, len(differences) - 1) * std / math.sqrt(len(differences))
        low, high = mean - half, mean + half
    return PairedDifference(seeds, differences, mean, std, confidence, low, high)

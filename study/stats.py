"""The statistics of the study's reports: a mean over replicates with its Student-t interval and
the design's minimum detectable effect, and Welch's interval for two independent designs.

The intervals are scipy's (``ttest_1samp``, for paired differences the paired test's interval, and
``ttest_ind(equal_var=False)``); the MDE is the closed form (t_{1-a/2} + t_{power}) sd / sqrt(n).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import scipy.stats

CONFIDENCE, POWER = 0.95, 0.80


@dataclass(frozen=True)
class Estimate:
    """Mean of per-replicate values with a Student-t confidence interval and the design's MDE."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """The Student-t CI of the mean (scipy's one-sample t-test: for paired differences, the
        paired test's interval)."""
        if self.n < 2:
            return math.nan, math.nan
        if self.sd == 0:  # no spread: scipy's interval is undefined, the mean is exact
            return self.mean, self.mean
        ci = scipy.stats.ttest_1samp(self.values, 0.0).confidence_interval(CONFIDENCE)
        return float(ci.low), float(ci.high)

    @property
    def half_width(self) -> float:
        low, high = self.interval
        return (high - low) / 2

    @property
    def mde(self) -> float:
        """The smallest true mean this design detects with POWER (two-sided, 1 - CONFIDENCE)."""
        if self.n < 2:
            return math.nan
        df = self.n - 1
        t_sum = scipy.stats.t.ppf(0.5 + CONFIDENCE / 2, df) + scipy.stats.t.ppf(POWER, df)
        return float(t_sum) * self.sd / math.sqrt(self.n)

    def replicates_for(self, effect: float, power: float | None = POWER, at_most: int = 10_000) -> int | None:
        """Replicates whose MDE is ``effect`` at this spread (Student t), or with ``power=None`` whose
        CI half-width is; None if the spread is unknown.

        The normal quantiles give a lower bound in closed form (t quantiles are larger), so the
        search for the first n that the t quantiles admit starts there and takes a few steps.
        """
        if self.n < 2 or not self.sd > 0 or effect <= 0:
            return None
        alpha_q = 0.5 + CONFIDENCE / 2

        def reached(n: int) -> bool:
            t_sum = scipy.stats.t.ppf(alpha_q, n - 1) + (scipy.stats.t.ppf(power, n - 1) if power else 0.0)
            return t_sum * self.sd / math.sqrt(n) <= effect

        z_sum = scipy.stats.norm.ppf(alpha_q) + (scipy.stats.norm.ppf(power) if power else 0.0)
        n = max(2, math.floor((z_sum * self.sd / effect) ** 2))
        while n <= at_most and not reached(n):
            n += 1
        return n if n <= at_most else None


def difference(a: Estimate, b: Estimate) -> tuple[float, tuple[float, float]]:
    """``a.mean - b.mean`` with its Welch 95% CI: two independent designs (say, two base models),
    whose replicates pair nothing and whose spreads may differ."""
    gap = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return gap, (math.nan, math.nan)
    if a.sd == 0 and b.sd == 0:  # no spread on either side: the difference is exact
        return gap, (gap, gap)
    ci = scipy.stats.ttest_ind(a.values, b.values, equal_var=False).confidence_interval(CONFIDENCE)
    return gap, (float(ci.low), float(ci.high))


def estimate(values: Iterable[float | None]) -> Estimate:
    return Estimate(tuple(float(v) for v in values if v is not None))


def welch_mde(a: Estimate, b: Estimate) -> float:
    """The smallest true difference of means that Welch's test of ``a`` against ``b`` detects with
    POWER (two-sided, 1 - CONFIDENCE), at their spreads, with Welch-Satterthwaite degrees of freedom."""
    if a.n < 2 or b.n < 2:
        return math.nan
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    t_sum = scipy.stats.t.ppf(0.5 + CONFIDENCE / 2, df) + scipy.stats.t.ppf(POWER, df)
    return float(t_sum * math.sqrt(va + vb))

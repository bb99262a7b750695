"""95% confidence intervals over seeds, and whether two of them separate two methods.

Method: Student's t interval of a mean over n seeds, mean +- t(0.975, n - 1) * s / sqrt(n), s the sample
standard deviation. It assumes the per-seed values are normal around the method's true mean. With few seeds it
is honest and wide: t(0.975, 1) = 12.71, so with 2 seeds the interval is the mean +- 6.35 x |x1 - x2|. With one
seed there is no interval (None), and nothing can be separated.

A ratio of two positive quantities (a step time against the baseline's) gets Welch's t interval on the
difference of the log means, exponentiated: a CI of the ratio of geometric means that needs no equal variances.

Two methods are *separated* when their intervals do not overlap. That is conservative (two 95% intervals that
just touch correspond to p ~ 0.006 for equal variances), which is the point: the study's report may rank two
methods only when the numbers leave no doubt at this scale.

t quantiles are computed exactly for integer degrees of freedom from the closed form of Student's t
distribution (Abramowitz & Stegun 26.7.3-4) by bisection; fractional Welch degrees of freedom are rounded down
(a wider, conservative interval).
"""
from __future__ import annotations

import enum
import math
from typing import Any, Optional, Sequence, Tuple

__all__ = ["t_quantile", "mean_ci95", "ratio_ci95", "Separation", "separation", "Interval", "interval_from_json",
           "CI_METHOD"]

Interval = Tuple[float, float]


def interval_from_json(x: Any) -> Optional[Interval]:
    """An interval as summary.json holds it ([lo, hi] or null)."""
    return None if x is None else (float(x[0]), float(x[1]))


CI_METHOD = ("95% confidence intervals over seeds: Student's t interval, mean +- t(0.975, n-1) * sd / sqrt(n) (with "
             "2 seeds t = 12.71: wide); step-time ratios: Welch's t interval of the log ratio of geometric means; "
             "two methods are called separated only when their intervals do not overlap")


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df >= 1 (Abramowitz & Stegun 26.7.3 / 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: (2/pi) * (theta + sin * cos * (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 2 terms
        term, total = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + s * total) if df > 1 else 2 / math.pi * theta
    term, total = 1.0, 0.0  # even: sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df / 2 terms
    for k in range(1, df // 2 + 1):
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The p quantile (p in (0.5, 1)) of Student's t with integer df >= 1, to ~1e-10."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    target, lo, hi = 2 * p - 1, 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _finite(xs: Sequence[Optional[float]]) -> list:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def mean_ci95(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[Interval]]:
    """(mean, 95% t interval) of the finite values; the interval is None with fewer than 2 of them."""
    xs = _finite(values)
    if not xs:
        return None, None
    n, m = len(xs), sum(xs) / len(xs)
    if n < 2:
        return m, None
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return m, (m - half, m + half)


def ratio_ci95(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> Tuple[Optional[float],
                                                                                      Optional[Interval]]:
    """(ratio of geometric means a / b, Welch 95% interval of it) over positive samples a and b."""
    la, lb = [math.log(x) for x in _finite(a) if x > 0], [math.log(x) for x in _finite(b) if x > 0]
    if not la or not lb:
        return None, None
    ma, mb = sum(la) / len(la), sum(lb) / len(lb)
    ratio = math.exp(ma - mb)
    if len(la) < 2 or len(lb) < 2:
        return ratio, None
    va = sum((x - ma) ** 2 for x in la) / (len(la) - 1) / len(la)
    vb = sum((x - mb) ** 2 for x in lb) / (len(lb) - 1) / len(lb)
    if va + vb == 0:
        return ratio, (ratio, ratio)
    df = (va + vb) ** 2 / (va ** 2 / (len(la) - 1) + vb ** 2 / (len(lb) - 1))  # Welch-Satterthwaite
    half = t_quantile(0.975, max(1, math.floor(df))) * math.sqrt(va + vb)
    return ratio, (math.exp(ma - mb - half), math.exp(ma - mb + half))


class Separation(str, enum.Enum):
    """How method a's interval lies against method b's."""

    BELOW = "below"  # a's interval entirely below b's
    ABOVE = "above"  # entirely above
    OVERLAP = "overlap"  # not separated at this scale
    UNKNOWN = "unknown"  # an interval is missing (one seed, or nothing measured)


def separation(a: Optional[Interval], b: Optional[Interval]) -> Separation:
    if a is None or b is None:
        return Separation.UNKNOWN
    if a[1] < b[0]:
        return Separation.BELOW
    if a[0] > b[1]:
        return Separation.ABOVE
    return Separation.OVERLAP

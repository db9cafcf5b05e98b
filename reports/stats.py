"""Statistics of repeated measurements: median, spread and 95% confidence intervals.

Pure functions on lists of floats. Two intervals: the distribution-free interval of the median from
order statistics (common/stats.py: needs at least 6 rounds to reach 95%), and Student's t interval
of the mean for fewer rounds. `summarize` picks the first when it exists and says which one it used.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from common.stats import median_ci

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30, from standard tables.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the table up to 30, then the Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float] | None:
    """Student's t 95% interval of the mean; None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample standard deviation / mean; None for fewer than 2 values or a zero mean."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else None


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    stdev: float | None
    cv: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str | None  # "median (order statistics)" | "mean (Student t)" | None
    minimum: float
    maximum: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    ci: tuple[float, float] | None = median_ci(values)
    method: str | None = "median (order statistics)"
    if ci is None:
        ci, method = mean_ci(values), "mean (Student t)"
        if ci is None:
            method = None
    return Summary(
        n=len(values),
        median=statistics.median(values),
        mean=statistics.fmean(values),
        stdev=statistics.stdev(values) if len(values) > 1 else None,
        cv=coefficient_of_variation(values),
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        ci_method=method,
        minimum=min(values),
        maximum=max(values),
    )


def scaling_efficiency(rate: float, gpus: int, base_rate: float, base_gpus: int) -> float:
    """T(N) / ((N / N0) x T(N0)); with N0 = 1 this is T(N) / (N x T(1))."""
    return rate * base_gpus / (gpus * base_rate)


def algbw(nbytes: float, seconds: float) -> float:
    """nccl-tests' algorithm bandwidth: message bytes / time, in bytes per second."""
    return nbytes / seconds


def busbw(algbw_value: float, ranks: int) -> float:
    """nccl-tests' bus bandwidth for all-reduce: algbw x 2(N-1)/N (0 for one rank)."""
    return algbw_value * 2 * (ranks - 1) / ranks


def intervals_apart(a: Summary, b: Summary) -> bool | None:
    """True when the two 95% confidence intervals do not overlap; None when one has none."""
    if a.ci_low is None or a.ci_high is None or b.ci_low is None or b.ci_high is None:
        return None
    return b.ci_high < a.ci_low or b.ci_low > a.ci_high

"""The distribution-free 95% interval of a median, from order statistics: one rule for the sweep's
report (reports/stats.py) and the `ThroughputCallback` of a user's `fit` (training/api/rates.py).
Pure, no dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95


def median_ci_ranks(n: int) -> tuple[int, int] | None:
    """1-based ranks (k, n-k+1) of the order statistics that bound the median with >= 95% coverage.

    Coverage of [x_(k), x_(n-k+1)] is 1 - 2 P(B <= k-1) with B ~ Binomial(n, 1/2); the largest k
    that keeps it >= 95% gives the narrowest interval. None when even [min, max] falls short (n < 6).
    """
    best = None
    cumulative = 0.0
    for k in range(1, n // 2 + 1):
        cumulative += math.comb(n, k - 1) / 2**n  # P(B <= k-1)
        if 1 - 2 * cumulative >= CONFIDENCE:
            best = (k, n - k + 1)
        else:
            break
    return best


def median_ci(values: Sequence[float]) -> tuple[float, float] | None:
    """The median's 95% interval [x_(k), x_(n-k+1)]; None for fewer than 6 values."""
    ranks = median_ci_ranks(len(values))
    if ranks is None:
        return None
    ordered = sorted(values)
    return ordered[ranks[0] - 1], ordered[ranks[1] - 1]

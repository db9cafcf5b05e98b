"""common.stats, the median's order-statistics interval (the sweep's report and ThroughputCallback),
against hand-computed binomial coverages."""

from __future__ import annotations

from common.stats import median_ci, median_ci_ranks


def test_median_ci_ranks_follow_the_binomial():
    """[x_(k), x_(n-k+1)] with the largest k whose coverage 1 - 2 P(B <= k-1) is still >= 95%."""
    assert median_ci_ranks(5) is None  # [min, max] covers only 1 - 2/32 = 93.75%
    assert median_ci_ranks(6) == (1, 6)  # 1 - 2/64 = 96.9%
    assert median_ci_ranks(10) == (2, 9)  # P(B<=1) = 11/1024; P(B<=2) = 56/1024 is too much
    assert median_ci_ranks(20) == (6, 15)  # P(B<=5) = 0.0207, P(B<=6) = 0.0577


def test_median_ci_takes_order_statistics():
    values = [10, 1, 9, 2, 8, 3, 7, 4, 6, 5]
    assert median_ci(values) == (2, 9)
    assert median_ci(values[:5]) is None

"""reports.stats against hand-computed numbers: intervals, efficiency, nccl-tests bandwidths."""

from __future__ import annotations

import math

import pytest

from reports import stats


def test_mean_ci_uses_student_t():
    """mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776: 3 +- 2.776 * 1.5811 / sqrt(5) = 3 +- 1.9629."""
    low, high = stats.mean_ci([1, 2, 3, 4, 5])
    assert low == pytest.approx(3 - 1.96294, abs=1e-4)
    assert high == pytest.approx(3 + 1.96294, abs=1e-4)
    assert stats.mean_ci([4.0]) is None


def test_t_quantiles_match_scipy():
    from scipy import stats as scipy_stats  # in the test extra: a reference, not a dependency

    for df in (1, 2, 5, 10, 29, 30, 31, 50, 200):
        assert stats.t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3)


def test_summarize_picks_the_median_interval_from_six_rounds():
    few = stats.summarize([9.0, 10.0, 11.0])
    assert few.median == 10 and few.cv == pytest.approx(0.1)  # s = 1, mean = 10
    assert few.ci_method == "mean (Student t)"
    many = stats.summarize([9.0, 10.0, 11.0, 10.0, 10.5, 9.5])
    assert many.ci_method == "median (order statistics)"
    assert (many.ci_low, many.ci_high) == (9.0, 11.0)
    one = stats.summarize([5.0])
    assert one.ci_low is None and one.cv is None and one.ci_method is None


def test_scaling_efficiency_is_throughput_over_n_times_baseline():
    assert stats.scaling_efficiency(1800, 2, 1000, 1) == pytest.approx(0.9)
    assert stats.scaling_efficiency(4000, 4, 1000, 1) == pytest.approx(1.0)
    # against a baseline of 2 devices: 3000 x 2 / (4 x 1800)
    assert stats.scaling_efficiency(3000, 4, 1800, 2) == pytest.approx(0.8333, abs=1e-4)


def test_busbw_is_algbw_times_2_n_minus_1_over_n():
    """1 GiB in 0.1 s: algbw 10.737 GB/s; busbw x1 on 2, x1.5 on 4, x1.75 on 8 ranks, 0 on one."""
    alg = stats.algbw(2**30, 0.1)
    assert alg / 1e9 == pytest.approx(10.73741824)
    assert stats.busbw(alg, 2) == pytest.approx(alg)
    assert stats.busbw(alg, 4) / 1e9 == pytest.approx(16.10612736)
    assert stats.busbw(alg, 8) == pytest.approx(alg * 1.75)
    assert stats.busbw(alg, 1) == 0


def test_coefficient_of_variation_needs_two_values():
    assert stats.coefficient_of_variation([3.0]) is None
    assert stats.coefficient_of_variation([1.0, 3.0]) == pytest.approx(math.sqrt(2) / 2)

"""Fault injection (GPUDIAG_FAULT), the batch-size search and the out-of-memory message, without
TensorFlow: the search is a pure function of a `fits(batch)` callable, so any memory limit can be
played out in microseconds. tests/e2e/test_faults_e2e.py runs the same paths in real processes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.__main__ import main
from training.app.batch_size import FINE_BELOW, GRANULARITY, find_largest_batch, oom_message
from training.loop import faults


@pytest.mark.parametrize(
    ("threshold", "start", "limit", "best", "tries"),
    [
        (100, 64, 2048, 96, [64, 128, 96, 112, 104]),  # double once, bisect to a multiple of 8
        (48, 32, 2048, 48, [32, 64, 48, 56, 52, 50, 49]),  # below 64: exact
        (2048, 64, 2048, 2048, [64, 128, 256, 512, 1024, 2048]),  # the data is the limit
        (5, 64, 2048, 5, [64, 32, 16, 8, 4, 6, 5]),  # halve until one fits, then bisect up
        (0, 4, 2048, None, [4, 2, 1]),  # not even 1 fits
        (300, 64, 200, 200, [64, 128, 200]),  # capped by the data before memory runs out
    ],
)
def test_batch_search_with_injected_thresholds(threshold, start, limit, best, tries):
    """Doubling then bisecting finds the documented batch, with the documented tries."""
    search = find_largest_batch(lambda b: b <= threshold, start, limit)
    assert search.best == best
    assert [b for b, _ in search.attempts] == tries
    assert all(fitted == (b <= threshold) for b, fitted in search.attempts)


@given(
    threshold=st.integers(0, 5000),
    start=st.integers(1, 1024),
    limit=st.integers(1, 4096),
)
def test_batch_search_properties(threshold, start, limit):
    """The result fits, nothing larger than it within its precision fits, and tries stay few."""
    search = find_largest_batch(lambda b: b <= threshold, start, limit)
    attempted = dict(search.attempts)
    assert len(attempted) == len(search.attempts)  # never the same batch twice
    assert len(search.attempts) <= 30
    true_best = min(threshold, limit)
    if true_best < 1:
        assert search.best is None
        return
    assert search.best is not None and 1 <= search.best <= true_best
    assert attempted[search.best] is True
    if search.capped:
        assert search.best == limit
    elif search.best < FINE_BELOW:
        assert search.best == true_best
    else:
        assert true_best - search.best < GRANULARITY


def test_fault_spec_parsing():
    f = faults.parse("oom_above_batch=64, nan_at_step=7,sleep_per_step=0.25")
    assert (f.oom_above_batch, f.nan_at_step, f.sleep_per_step) == (64, 7, 0.25)
    assert f.kill_after_step is None
    assert faults.from_env({}) is None
    assert faults.from_env({faults.FAULT_ENV: "  "}) is None
    assert faults.from_env({faults.FAULT_ENV: "kill_after_step=3"}).kill_after_step == 3
    assert f.loss_after_step(7, 1.0) != f.loss_after_step(7, 1.0)  # NaN
    assert f.loss_after_step(6, 1.0) == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("oom_above=3", "cannot parse 'oom_above=3'"),
        ("nan_at_step", "cannot parse 'nan_at_step'"),
        ("nan_at_step=x", "nan_at_step needs a number"),
        ("sleep_per_step=-1", "must be >= 0"),
    ],
)
def test_a_bad_fault_spec_is_bad_input(capsys, monkeypatch, spec, message):
    """A typo in GPUDIAG_FAULT exits 2 with one line, before TensorFlow."""
    monkeypatch.setenv(faults.FAULT_ENV, spec)
    assert main(["--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_out_of_memory_message_names_the_batches():
    text = oom_message(256, 4)
    assert "out of memory at global batch 256 (64 per replica x 4 replicas)" in text
    assert "next smaller valid batch is --global-batch-size 252 (63 per replica)" in text
    assert "--global-batch-size 128" in text and "--auto-batch-size" in text
    assert "--accumulate-steps 2" in text  # the batch kept, the memory lowered
    assert "not even one example per replica fits" in oom_message(2, 2)

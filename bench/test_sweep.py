"""The scaling sweep: training throughput, input pipeline and all-reduce per (device count, size),
and the harness's share of the wall time (reported; asserted only under --harness-min-share).

Parametrised by bench/conftest.py from the sweep options; each case runs in the worker of its
device count and is timed by benchmark.pedantic (one warm-up round, then --rounds rounds).
Run: pytest bench --benchmark-only [--gpus 1 2 4] [--batch-sizes 32 64] [--cpu-replicas 2] ...
"""

from __future__ import annotations

import math
from typing import Any

import pytest

# a case whose worker fails before timing anything has not used the benchmark fixture: that is
# reported as the case's failure, not as a warning
pytestmark = pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")


def _measured(row: dict[str, Any] | None) -> dict[str, Any]:
    assert row is not None, "the case measured nothing (run with --benchmark-only, not --benchmark-disable)"
    rounds = row["round_seconds"]
    assert len(rounds) >= 1 and all(s > 0 and math.isfinite(s) for s in rounds), rounds
    return row


@pytest.mark.sweep("train")
def test_train_throughput(run_case: Any) -> None:
    """Training samples/s for one (device count, batch per device): a finite loss, a positive rate."""
    row = _measured(run_case())
    assert row["loss"] is not None and math.isfinite(row["loss"]), row["loss"]
    assert row["global_batch"] * row["steps"] / min(row["round_seconds"]) > 0


@pytest.mark.sweep("input")
def test_input_pipeline(run_case: Any) -> None:
    """The trainer's input pipeline alone, distributed to the replicas, for the same batches."""
    row = _measured(run_case())
    devices = row["gpus"] * row.get("workers", 1)  # a cluster's rows: each worker has `gpus`
    assert row["global_batch"] == row["batch_per_gpu"] * devices and row["steps"] > 0


@pytest.mark.sweep("allreduce")
def test_allreduce(run_case: Any) -> None:
    """A SUM all-reduce of one message size across the replicas (algbw, busbw): a positive bandwidth."""
    row = _measured(run_case())
    algbw = row["bytes"] * row["iters"] / max(row["round_seconds"])
    assert row["iters"] >= 1 and algbw > 0


def test_the_harness_spends_its_time_in_the_steps(sweep: Any, harness_now: Any, benchmark: Any) -> None:
    """Runs after every case and prints the share of the sweep's wall time so far spent in measured
    and warm-up steps (pytest's start, TensorFlow's starts, tracing and IPC are the rest); fails only
    below --harness-min-share when one is given (bench/test_harness_share.py gives one to a fixed
    sweep of ours: a user's small sweep is not held to it). It times nothing itself: it asks for
    `benchmark` only so that --benchmark-only runs it."""
    sweep.close_worker()  # the last case is done: free its memory and cores for what runs next
    harness = harness_now()
    share = sweep.options.harness_min_share
    required = f"at least {share:.0%} required" if share > 0 else "more --steps or --rounds raise it"
    print(
        f"\nharness: {harness['benchmark_seconds']:.1f} s of {harness['wall_seconds']:.1f} s in steps "
        f"({harness['fraction']:.0%}; {required})"
    )
    assert harness["benchmark_seconds"] > 0, "no case ran"
    assert harness["fraction"] >= share, harness

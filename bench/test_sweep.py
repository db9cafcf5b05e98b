"""The scaling sweep: training throughput, input pipeline and all-reduce per (device count, size).

Parametrised by bench/conftest.py from the sweep options; each case runs in the worker of its
device count and is timed by benchmark.pedantic (one warm-up round, then --rounds rounds).
Run: pytest bench --benchmark-only [--gpus 1 2 4] [--batch-sizes 32 64] [--cpu-replicas 2] ...
"""

from __future__ import annotations

from typing import Any

import pytest

# a case whose worker fails before timing anything has not used the benchmark fixture: that is
# reported as the case's failure, not as a warning
pytestmark = pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")


@pytest.mark.sweep("train")
def test_train_throughput(run_case: Any) -> None:
    """Training samples/s for one (device count, batch per device)."""
    row = run_case()
    if row is not None:
        assert len(row["round_seconds"]) >= 1 and all(s > 0 for s in row["round_seconds"])


@pytest.mark.sweep("input")
def test_input_pipeline(run_case: Any) -> None:
    """The trainer's input pipeline alone, distributed to the replicas, for the same batches."""
    run_case()


@pytest.mark.sweep("allreduce")
def test_allreduce(run_case: Any) -> None:
    """A SUM all-reduce of one message size across the replicas (algbw, busbw)."""
    run_case()

"""Two local workers on CPU, one of them slowed (GPUDIAG_FAULT slow_compute): the chief's summary
names it, with its ratio to the fastest, in --summary-json and in one printed line."""

from __future__ import annotations

import json

import pytest
from test_multiworker import finish, start_workers

pytestmark = pytest.mark.slow


def test_the_slowed_worker_is_named_with_its_ratio(tmp_path):
    args = [
        "--model", "mlp", "--epochs", "1", "--steps-per-epoch", "3", "--global-batch-size", "64",
        "--seed", "7", "--collective-timeout", "60", "--summary-json", str(tmp_path / "summary.json"),
    ]  # fmt: skip
    chief, slow = start_workers(args, faults=("", "slow_compute=4"))
    code, out, err = finish(chief, timeout=120)
    slow_code, _, slow_err = finish(slow, timeout=60)
    assert code == 0, err[-3000:]
    assert slow_code == 0, slow_err[-3000:]
    speed = json.loads((tmp_path / "summary.json").read_text())["workers_speed"]
    assert speed["slowest"] == "worker 1" and speed["fastest"] == "worker 0"
    assert speed["ratio"] > 1.3
    assert set(speed["per_worker"]) == {"worker 0", "worker 1"}
    assert "slowest worker: worker 1 (127.0.0.1:" in out and "slower than worker 0" in out

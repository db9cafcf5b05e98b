"""`gpudiag bandwidth` end to end on 2 CPU logical devices: the installed script starts the
TensorFlow child, which times each size with the one all-reduce timer; one TensorFlow start."""

from __future__ import annotations

import json

import pytest
from support import child_env, installed_script, run_child

pytestmark = pytest.mark.slow


def test_bandwidth_on_two_cpu_replicas_reports_doubling_sizes_with_nccl_tests_busbw():
    script = installed_script("gpudiag")
    assert script.exists(), f"{script} is missing: install the project (pip install -e .)"
    args = ("bandwidth", "--cpu-replicas", "2", "--min-bytes", "8", "--max-bytes", "64K", "--json")
    proc = run_child(str(script), *args, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = data["rows"]
    assert [r["bytes"] for r in rows] == [8 << i for i in range(14)]
    assert data["replicas"] == 2 and data["link"] is None
    for row in rows:
        assert row["seconds"] > 0 and row["iters"] >= 20
        assert row["algbw_gbps"] == pytest.approx(row["bytes"] / row["seconds"] / 1e9)
        assert row["busbw_gbps"] == pytest.approx(row["algbw_gbps"] * 2 * (2 - 1) / 2)
    assert data["verdict"].startswith("busbw ") and "over 2 CPU logical devices" in data["verdict"]

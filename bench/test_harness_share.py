"""The sweep harness's own cost, on a sweep whose size is ours: a fixed small sweep (2 CPU devices
where there is no GPU, cnn, one batch size, 50 steps x 15 rounds, three all-reduce sizes) run as a
user would run it, in a child pytest, must spend at least 60% of its wall time in measured or
warm-up steps (pytest's start, TensorFlow's starts, model building, tracing and IPC are the rest).

A user's own sweep is never held to this: its report states the share and what raises it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# a speed target of the project's own, not the user's sweep: run with --self-benchmarks
pytestmark = pytest.mark.selfbench

ROOT = Path(__file__).resolve().parent.parent
MIN_SHARE = 0.6
FIXED_SWEEP = ["--gpus", "1", "2", "--batch-sizes", "64", "--model", "cnn", "--steps", "50", "--rounds", "15",
               "--warmup-steps", "10", "--allreduce-bytes", "1K", "1M", "16M"]  # fmt: skip


def _devices(cpu_replicas: int | None) -> list[str]:
    """The machine's GPUs where it has two, else 2 CPU logical devices (as the sweep plans them)."""
    from training.devices.setup import plan_devices

    plan = plan_devices(cpu_replicas=cpu_replicas)
    if plan.kind == "gpu" and plan.num_replicas >= 2:
        return []
    return ["--cpu-replicas", str(max(2, cpu_replicas or 2))]


def _sweep(devices: list[str], report_dir: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_sweep.py", "--benchmark-only", "-p", "no:cacheprovider",
         "-q", "--report-dir", str(report_dir), *devices, *FIXED_SWEEP,
         "--harness-min-share", str(MIN_SHARE)],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )  # fmt: skip
    saved = report_dir / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    return {"returncode": proc.returncode, "tail": proc.stdout[-3000:], "harness": results.get("harness", {})}


def test_a_fixed_sweep_spends_most_of_its_time_in_its_steps(benchmark, pytestconfig, tmp_path):
    """At least 60% of the fixed sweep's wall time in its steps; the child's own harness test, held
    to the same share, passes too."""
    devices = _devices(pytestconfig.getoption("sweep_cpu_replicas", None))
    result = benchmark.pedantic(_sweep, args=(devices, tmp_path / "report"), rounds=1, iterations=1)
    harness = result["harness"]
    benchmark.extra_info.update({"harness": harness, "min_share": MIN_SHARE})
    assert harness, result["tail"]
    print(
        f"\nfixed sweep: {harness['benchmark_seconds']:.1f} s of {harness['wall_seconds']:.1f} s in steps "
        f"({harness['fraction']:.0%}; at least {MIN_SHARE:.0%} required); worker starts "
        f"{harness['worker_start_seconds']:.1f} s, building and tracing {harness['prepare_seconds']:.1f} s"
    )
    assert harness["fraction"] >= MIN_SHARE, harness
    assert result["returncode"] == 0, result["tail"]

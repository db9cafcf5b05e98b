"""What going through MultiWorkerMirroredStrategy's gRPC collectives costs on one host: 2 local
workers x 1 replica (`python -m training --local-workers 2`) against 1 process x 2 replicas
(MirroredStrategy), same model, data, seed and global batch, each a whole trainer run whose own
meter (warm-up steps left out) gives samples/s. The two alternate for a few rounds so that drift on
a shared machine hits both; the reported figure is the median of the per-round ratios.

On CPU replicas both contenders share the same cores; on a GPU machine each worker gets its share
of the GPUs (the launcher splits them) and the single process all of them.
Asserted: both reach the same final loss (they train the same model on the same batches), and
the multi-worker rate is a real, positive figure; the ratio itself is reported, not targeted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

# a speed target of the project's own, not the user's sweep: run with --self-benchmarks
pytestmark = pytest.mark.selfbench

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
ARGS = ["--model", "mlp", "--epochs", "1", "--steps-per-epoch", "60", "--global-batch-size", "128", "-q"]


def _run(extra: list[str], summary: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "training", *ARGS, *extra, "--summary-json", str(summary)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(summary.read_text())


def _rounds(tmp_path: Path, gpus: bool) -> dict:
    single = [] if gpus else ["--cpu-replicas", "2"]
    rates: dict[str, list[float]] = {"workers": [], "single": []}
    losses: dict[str, list[float]] = {"workers": [], "single": []}
    for i in range(ROUNDS):
        for name, extra in (("workers", ["--local-workers", "2"]), ("single", single)):
            summary = _run(extra, tmp_path / f"{name}-{i}.json")
            rates[name].append(summary["samples_per_sec"])
            losses[name].append(summary["final_loss"])
            replicas = summary["replicas"]
    return {
        "rates": rates,
        "final_loss": losses,
        "replicas": replicas,
        "median_samples_per_sec": {k: statistics.median(v) for k, v in rates.items()},
        "workers_over_single": statistics.median(
            w / s for w, s in zip(rates["workers"], rates["single"], strict=True)
        ),
    }


def test_two_local_workers_against_one_process(benchmark, tmp_path):
    from training.devices.setup import plan_devices

    gpus = plan_devices().kind == "gpu"
    result = benchmark.pedantic(_rounds, args=(tmp_path, gpus), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    medians = result["median_samples_per_sec"]
    print(
        f"\n{result['replicas']} replicas, mlp, batch 128, {ROUNDS} paired rounds: 2 local workers x 1 "
        f"{medians['workers']:.0f} samples/s, 1 process x 2 {medians['single']:.0f}; "
        f"workers / one process {result['workers_over_single']:.3f}"
    )
    for w, s in zip(result["final_loss"]["workers"], result["final_loss"]["single"], strict=True):
        assert abs(w - s) <= 1e-4 * max(abs(s), 1.0), (w, s)
    assert all(r and r > 0 for r in result["rates"]["workers"])

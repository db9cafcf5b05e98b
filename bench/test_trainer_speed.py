"""The trainer's speed targets, measured side by side in one child process (bench/trainer_vs_loop.py):

- steady-state throughput of the trainer (progress bar and callbacks included) is at least 0.95
  times that of a minimal `tf.function` + `strategy.run` loop on the same model, data and devices;
- the input pipeline alone delivers at least 5 times the training rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _measure(replicas: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trainer_vs_loop.py"), "--cpu-replicas", str(replicas)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trainer_keeps_up_with_a_hand_written_loop(benchmark):
    """Two CPU replicas: trainer / hand loop >= 0.95 (median of paired rounds); input >= 5x training."""
    result = benchmark.pedantic(_measure, args=(2,), rounds=1, iterations=1)
    benchmark.extra_info.update(
        {k: v for k, v in result.items() if k != "rates"} | {"rates": result["rates"]}
    )
    medians = result["median_samples_per_sec"]
    print(
        f"\ntrainer {medians['trainer']:.0f} samples/s, hand loop {medians['hand_loop']:.0f}, "
        f"ratio {result['trainer_over_hand_loop']:.3f}; input pipeline {medians['input_pipeline']:.0f} "
        f"samples/s = {result['input_over_training']:.1f}x training"
    )
    assert result["trainer_over_hand_loop"] >= 0.95
    assert result["input_over_training"] >= 5

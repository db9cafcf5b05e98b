"""The trainer's speed targets, measured side by side in one child process (bench/trainer_vs_loop.py)
on the devices the trainer would plan (its GPUs where there are any, else --cpu-replicas, default 2):

- the trainer (progress bar and callbacks included) runs at least 0.95 times as fast as a minimal
  `tf.function` + `strategy.run` loop on the same model, data and devices; both timed from outside
  the same way, the trainer's own meter reported beside them as a cross-check;
- it runs faster than Keras `model.fit` under the same strategy (why the trainer has its own loop);
- the input pipeline alone delivers at least 5 times the training rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIN_TRAINER_OVER_HAND_LOOP = 0.95
MIN_INPUT_OVER_TRAINING = 5.0


def _devices(cpu_replicas: int | None) -> list[str]:
    """The trainer's own plan (no TensorFlow here): its GPUs, or CPU logical devices without any."""
    from training.devices import plan_devices

    plan = plan_devices(cpu_replicas=cpu_replicas)
    if plan.kind == "gpu":
        return plan.child_args()
    return ["--cpu-replicas", str(cpu_replicas or 2)]


def _measure(devices: list[str]) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trainer_vs_loop.py"), *devices],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trainer_keeps_up_with_a_hand_written_loop(benchmark, pytestconfig):
    """trainer / hand loop >= 0.95 and trainer > Keras fit (medians of paired rounds); input >= 5x."""
    cpu_replicas = pytestconfig.getoption("sweep_cpu_replicas", None)
    result = benchmark.pedantic(_measure, args=(_devices(cpu_replicas),), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    medians = result["median_samples_per_sec"]
    meter = result["trainer_meter_samples_per_sec"]
    print(
        f"\non {result['replicas']} {result['device_kind'].upper()} replica(s), {result['model']}, "
        f"global batch {result['global_batch_size']}: trainer {medians['trainer']:.0f} samples/s "
        f"(its own meter: {meter:.0f}), hand loop {medians['hand_loop']:.0f}, Keras fit "
        f"{medians['keras_fit']:.0f}; trainer/hand loop {result['trainer_over_hand_loop']:.3f}, "
        f"fit/hand loop {result['keras_fit_over_hand_loop']:.3f}, trainer/fit "
        f"{result['trainer_over_keras_fit']:.2f}; input pipeline {medians['input_pipeline']:.0f} samples/s "
        f"= {result['input_over_training']:.1f}x training"
    )
    # the cross-check: the meter leaves out the warm-up steps and fit's per-call start, so it reads
    # at least the outside rate; far above it would mean one of the two timers is wrong
    assert medians["trainer"] * 0.9 <= meter <= medians["trainer"] * 2, (meter, medians["trainer"])
    assert result["trainer_over_hand_loop"] >= MIN_TRAINER_OVER_HAND_LOOP
    assert result["trainer_over_keras_fit"] > 1.0
    assert result["input_over_training"] >= MIN_INPUT_OVER_TRAINING

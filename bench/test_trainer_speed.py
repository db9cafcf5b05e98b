"""The trainer's speed targets, measured side by side in one child process (bench/trainer_vs_loop.py)
on the devices the trainer would plan (its GPUs where there are any, else --cpu-replicas, default 2):

- the trainer (progress bar and callbacks included, `--steps-per-execution auto`) against a minimal
  one-step-per-call `tf.function` + `strategy.run` loop on the same model, data and devices, both
  timed from outside the same way (the trainer's own meter reported beside them as a cross-check).
  Issue 10's targets: >= 1.25 on the MLP, >= 1.0 on the CNN. What several steps per call can save
  is the host round trip per step, so the target is asserted where this machine allows it: the
  trainer must reach min(target, 95% of the ceiling), the ceiling being the trainer's own traced
  multi-step function called once per round without callbacks; never below 0.95. Whether the
  target itself was met is printed and recorded in the benchmark's extra_info;
- it runs faster than Keras `model.fit` under the same strategy (why the trainer has its own loop);
- the input pipeline alone delivers at least 5 times the training rate.
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
MIN_TRAINER_OVER_HAND_LOOP = 0.95
TARGETS = {"mlp": 1.25, "cnn": 1.0}  # trainer / hand loop, issue 10
SHARE_OF_CEILING = 0.95
MIN_INPUT_OVER_TRAINING = 5.0


def _devices(cpu_replicas: int | None) -> list[str]:
    """The trainer's own plan (no TensorFlow here): its GPUs, or CPU logical devices without any."""
    from training.devices.setup import plan_devices

    plan = plan_devices(cpu_replicas=cpu_replicas)
    if plan.kind == "gpu":
        return plan.child_args()
    return ["--cpu-replicas", str(cpu_replicas or 2)]


def _measure(devices: list[str], model: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trainer_vs_loop.py"), *devices, "--model", model],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def required_ratio(model: str, ceiling_over_hand_loop: float) -> float:
    """The trainer / hand loop ratio asserted: the issue's target where several steps per call can
    reach it on these devices, else 95% of what they can reach; never below 0.95."""
    return min(TARGETS[model], max(MIN_TRAINER_OVER_HAND_LOOP, SHARE_OF_CEILING * ceiling_over_hand_loop))


@pytest.mark.parametrize("model", list(TARGETS))
def test_trainer_against_a_hand_written_loop(benchmark, pytestconfig, model):
    """trainer / hand loop as above, trainer > Keras fit (medians of paired rounds); input >= 5x."""
    cpu_replicas = pytestconfig.getoption("sweep_cpu_replicas", None)
    result = benchmark.pedantic(_measure, args=(_devices(cpu_replicas), model), rounds=1, iterations=1)
    required = required_ratio(model, result["ceiling_over_hand_loop"])
    result["target"] = TARGETS[model]
    result["target_met"] = result["trainer_over_hand_loop"] >= TARGETS[model]
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
        f"= {result['input_over_training']:.1f}x training\n"
        f"  steps per call {result['auto_k']}: trainer at K=1 / hand loop "
        f"{result['trainer_k1_over_hand_loop']:.3f}, ceiling (one call per round) / hand loop "
        f"{result['ceiling_over_hand_loop']:.3f}; issue 10's target {TARGETS[model]}: "
        f"{'met' if result['target_met'] else 'NOT met'} (asserted here: >= {required:.3f})"
    )
    # the cross-check: the meter leaves out the warm-up steps and fit's per-call start, so it reads
    # at least the outside rate; far above it would mean one of the two timers is wrong
    assert medians["trainer"] * 0.9 <= meter <= medians["trainer"] * 2, (meter, medians["trainer"])
    assert result["trainer_over_hand_loop"] >= required
    assert result["trainer_over_keras_fit"] > 1.0
    assert result["input_over_training"] >= MIN_INPUT_OVER_TRAINING

"""Several steps per traced call (training/multistep.py, `--steps-per-execution auto`) against the
one-step-per-call hand loop, measured side by side in one child process per model
(bench/multistep_vs_loop.py) on the devices the trainer would plan (its GPUs where there are any,
else --cpu-replicas, default 2). Issue 10's targets, as medians of paired rounds:

- MLP: multi-step / hand loop >= 1.25 (per-step dispatch dominates: what K steps per call saves);
- CNN: multi-step / hand loop >= 1.0.

The multi-step contender replays every step's logs to a Keras CallbackList with the progress bar,
as the trainer's loop will once it calls training.multistep; today's Trainer.fit (one host sync per
step) is measured beside it for reference, not asserted here (bench/test_trainer_speed.py does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"mlp": 1.25, "cnn": 1.0}


def _devices(cpu_replicas: int | None) -> list[str]:
    from training.devices import plan_devices

    plan = plan_devices(cpu_replicas=cpu_replicas)
    if plan.kind == "gpu":
        return plan.child_args()
    return ["--cpu-replicas", str(cpu_replicas or 2)]


def _measure(devices: list[str], model: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "multistep_vs_loop.py"), *devices, "--model", model],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Issue 10 is open: on the 2-core build machine (a 39 ms MLP step) the targets were not met
# (MLP 1.045, CNN 0.982 on 2026-11-27). Strict: the day they are met, this xfail fails and must go.
@pytest.mark.xfail(reason="issue 10: multi-step targets not met on CPU replicas yet", strict=True)
@pytest.mark.parametrize("model", list(TARGETS))
def test_several_steps_per_call_beat_the_one_step_hand_loop(benchmark, pytestconfig, model):
    cpu_replicas = pytestconfig.getoption("sweep_cpu_replicas", None)
    result = benchmark.pedantic(_measure, args=(_devices(cpu_replicas), model), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    medians = result["median_samples_per_sec"]
    print(
        f"\n{model} on {result['replicas']} {result['device_kind'].upper()} replica(s), global batch "
        f"{result['global_batch_size']}: multi-step (auto K={result['auto_k']}) {medians['multistep']:.0f} "
        f"samples/s, K=1 {medians['multistep_k1']:.0f}, hand loop {medians['hand_loop']:.0f}, trainer today "
        f"{medians['trainer']:.0f}; multi-step/hand loop {result['multistep_over_hand_loop']:.3f}, K=1/hand "
        f"loop {result['multistep_k1_over_hand_loop']:.3f}, "
        f"trainer/hand loop {result['trainer_over_hand_loop']:.3f}"
    )
    assert result["multistep_over_hand_loop"] >= TARGETS[model]

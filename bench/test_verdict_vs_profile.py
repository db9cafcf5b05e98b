"""How well the summary's bottleneck verdict agrees with a TensorBoard profile of the same run.

The two cases of tests/e2e/test_bottleneck_e2e.py, each one trainer run on CPU replicas with
`--profile-steps` and `--summary-json`: the MLP on large noise JPEGs decoded to a larger
`--image-size` on 1 replica (input-bound), and the CNN on in-memory synthetic data on 2 replicas
(compute-bound). For each, the profile of its profiled steps is split into the time the step waits
on the iterator's get-next op, the collective ops, and the rest (bench/profile_shares.py); the
verdict its largest share implies is compared with the summary's verdict, and the shares both ways
are reported (the summary's come from measurements taken after training, the profile's from the
profiled steps themselves, which the summary's rate leaves out).

Asserted: both verdicts agree on both cases, and the profile holds what it must (the step calls,
one get-next per profiled step and replica, collectives with 2 replicas and none with 1). The runs
are one after the other: the input-bound run must not share the cores with another training run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from profile_shares import compare, read_profile

# a figure of the project's own, not the user's sweep: run with --self-benchmarks
pytestmark = pytest.mark.selfbench

ROOT = Path(__file__).resolve().parent.parent
PROFILED = (11, 20)  # after the 5 warm-up steps; 10 steps
CASES = {
    # the e2e test's cases; the data folder is filled in by _cases
    "input": (
        ["--cpu-replicas", "1", "--model", "mlp", "--image-size", "64", "--global-batch-size", "16"],
        30,
    ),
    "compute": (["--cpu-replicas", "2", "--model", "cnn"], 40),
}


def _jpeg_folder(root: Path, per_class: int = 16, size: int = 768) -> Path:
    """Noise JPEGs: large and incompressible, so each costs real decoding work."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg", quality=95)
    return root


def _train(args: list[str], steps: int, tmp: Path, name: str) -> dict[str, Any]:
    """One profiled trainer run on CPU replicas; its summary."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    for key in [k for k in env if k.startswith("TRAINING_") or k == "TF_CONFIG"]:
        del env[key]
    summary = tmp / f"{name}.json"
    command = [
        sys.executable, "-m", "training", *args, "--epochs", "1", "--steps-per-epoch", str(steps),
        "--profile-steps", f"{PROFILED[0]}:{PROFILED[1]}", "--log-dir", str(tmp / f"logs-{name}"),
        "--summary-json", str(summary), "-q",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(summary.read_text())


def _cases(tmp: Path) -> dict[str, dict[str, Any]]:
    images = _jpeg_folder(tmp / "images")
    found = {}
    for name, (args, steps) in CASES.items():
        extra = ["--data", str(images)] if name == "input" else []
        summary = _train([*args, *extra], steps, tmp, name)
        first, last = summary["profile"]["steps"]
        found[name] = {
            **compare(summary["bottleneck"], read_profile(summary["profile"]["trace_dir"]), last - first + 1),
            "replicas": summary["replicas"],
            "profiled_steps": [first, last],
        }
    return found


def test_verdict_agrees_with_a_profile(benchmark, tmp_path):
    found = benchmark.pedantic(_cases, args=(tmp_path,), rounds=1, iterations=1)
    benchmark.extra_info.update(found)
    steps = PROFILED[1] - PROFILED[0] + 1
    for name, case in found.items():
        summary, profile = case["summary_shares"], case["profile_shares"]
        print(
            f"\n{name} case, {case['replicas']} replica(s), steps {PROFILED[0]}-{PROFILED[1]}: summary "
            f"{case['summary_verdict']} {summary} (headroom {case['input_headroom']:.2f}, step "
            f"{case['summary_step_seconds'] * 1e3:.1f} ms); profile {case['profile_verdict']} {profile} "
            f"(step {case['profile_step_seconds'] * 1e3:.1f} ms); summary - profile {case['differences']}"
        )
    for name, case in found.items():
        events = case["events"]
        # the profile holds exactly the profiled steps: one get-next per step and replica (the
        # calls are cut around the range); step times are printed, not asserted (a shared
        # machine's steps vary by 2x from run to run)
        assert events["calls"] >= 1 and events["get_next"] == steps * case["replicas"], (name, events)
        assert (events["collectives"] > 0) == (case["replicas"] > 1), (name, events)
    assert found["input"]["summary_verdict"] == "input", found["input"]
    assert found["compute"]["summary_verdict"] != "input", found["compute"]
    for name, case in found.items():
        assert case["agree"], (name, case)

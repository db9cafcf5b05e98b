"""Helpers for tests that start child processes: a quiet, GPU-less environment and a runner.

Kept out of conftest.py because `from conftest import ...` is ambiguous once bench/ has a
conftest.py of its own. Each child costs a TensorFlow start (~3 s), so tests that need
TensorFlow group their assertions into as few processes as they can.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in [k for k in env if k.startswith("TRAINING_")]:
        del env[key]
    env.update(extra)
    return env


def run_module(
    module: str, *args: str, timeout: float = 300, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env or child_env(),
    )


def start_training(args: list[str], fault: str = "") -> subprocess.Popen[str]:
    """`python -m training ARGS` in the background, with GPUDIAG_FAULT set to `fault`."""
    return subprocess.Popen(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env=child_env(GPUDIAG_FAULT=fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

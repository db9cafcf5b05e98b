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
# A pynvml that finds no driver (tests/fakes/no_driver/pynvml.py): first on a child's PYTHONPATH.
NO_DRIVER_PATH = Path(__file__).resolve().parent / "fakes" / "no_driver"
HELPERS = Path(__file__).resolve().parent / "helpers"  # child scripts that run TensorFlow


def child_env(**extra: str) -> dict[str, str]:
    """A child's environment on a simulated GPU-less machine: NVML finds no driver and CUDA no GPU,
    whatever this machine has, so a test means the same on a GPU host as on the build machine."""
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NO_DRIVER_PATH), str(ROOT), env.get("PYTHONPATH")]))
    for key in [k for k in env if k.startswith("TRAINING_")]:
        del env[key]
    env.update(extra)
    return env


def installed_script(name: str) -> Path:
    """An entry point installed beside this interpreter (pip install -e . puts it there)."""
    return Path(sys.executable).parent / name


def start_child(
    *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`python ARGV...` in the background (`-m MODULE ...` or a script), in the repository, with
    `child_env()` unless `env` is given; its output captured as text."""
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd or ROOT,
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_child(
    *argv: str, timeout: float = 300, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python ARGV...` to its end, as start_child starts it; killed (TimeoutExpired) after `timeout`."""
    proc = start_child(*argv, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_module(
    module: str, *args: str, timeout: float = 300, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS...` to its end."""
    return run_child("-m", module, *args, timeout=timeout, cwd=cwd, env=env)


def run_helper(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """One of tests/helpers/ (a child script that runs TensorFlow) to its end."""
    return run_child(str(HELPERS / script), *args, timeout=timeout)


def start_helper(script: str, *args: str) -> subprocess.Popen[str]:
    """One of tests/helpers/ in the background."""
    return start_child(str(HELPERS / script), *args)


def start_training(args: list[str], fault: str = "", **env: str) -> subprocess.Popen[str]:
    """`python -m training ARGS` in the background, with GPUDIAG_FAULT set to `fault`."""
    return start_child("-m", "training", *args, env=child_env(GPUDIAG_FAULT=fault, **env))


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    """Wait for a child from `start_child`: (exit code, stdout, stderr). One still running at
    `timeout` is killed, and the test fails with the end of its stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout:g} s: {err[-2000:]}") from None
    return proc.returncode, out, err

"""`gpudiag check` (no --deep) against `python -c "import tensorflow"` on the same machine, side by side.

The promise: a check takes less than 0.15 x a TensorFlow import, because it never imports TensorFlow.
Both are timed as whole processes (interpreter start included), alternately, round after round, so
that a busy machine slows both alike; medians of the rounds. Each check's exit code and JSON are
checked too: a gpudiag that failed at once would be fast and wrong. Two cases: a recorded
inventory, and the live machine (NVML, or its absence, as this machine has it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

# a speed target of the project's own, not the user's sweep: run with --self-benchmarks
pytestmark = pytest.mark.selfbench

FIXTURE = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "inv-workstation-2x5090-display.json"
)
ROUNDS = 5
MAX_RATIO = 0.15
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _gpudiag() -> list[str]:
    """The installed entry point beside this interpreter: the command users run."""
    script = Path(sys.executable).parent / "gpudiag"
    assert script.exists(), f"{script} is missing: pip install -e ."
    return [str(script)]


def _timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=ENV, timeout=300)
    return time.perf_counter() - start, proc


def _checked(proc: subprocess.CompletedProcess[str]) -> dict:
    """A real answer: exit 0 (ready) or 1 (a check failed), and the JSON report with its findings."""
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["findings"] and set(report["summary"]) == {"pass", "warn", "fail", "skip"}
    assert proc.returncode == (1 if report["summary"]["fail"] else 0)
    return report


@pytest.mark.benchmark(group="gpudiag")
@pytest.mark.parametrize("where", ["recorded-inventory", "live-machine"])
def test_gpudiag_check_vs_import_tensorflow(benchmark, where):
    check_cmd = [*_gpudiag(), "check", "--json"]
    if where == "recorded-inventory":
        check_cmd += ["--inventory", str(FIXTURE)]
    tf_cmd = [sys.executable, "-c", "import tensorflow"]
    _timed(tf_cmd)  # warm the file cache for both, so neither pays for a cold disk
    _checked(_timed(check_cmd)[1])
    tf_times: list[float] = []
    reports: list[dict] = []

    def import_tensorflow_first() -> tuple[tuple, dict]:
        # run between the timed checks (pedantic's setup is not timed): the two alternate
        seconds, proc = _timed(tf_cmd)
        assert proc.returncode == 0, proc.stderr[-2000:]
        tf_times.append(seconds)
        return (), {}

    def check() -> None:
        proc = subprocess.run(check_cmd, check=False, capture_output=True, text=True, env=ENV, timeout=300)
        reports.append(_checked(proc))

    benchmark.pedantic(check, setup=import_tensorflow_first, rounds=ROUNDS)
    check_median = statistics.median(benchmark.stats.stats.data)
    tf_median = statistics.median(tf_times)
    ratio = check_median / tf_median
    driver = next(f for f in reports[-1]["findings"] if f["check"] == "driver")
    benchmark.extra_info.update(
        {
            "gpudiag_check_median_s": round(check_median, 4),
            "import_tensorflow_median_s": round(tf_median, 4),
            "ratio": round(ratio, 4),
            "rounds": ROUNDS,
            "command": " ".join(check_cmd),
            "driver_finding": driver["message"],
        }
    )
    print(
        f"\n{where}: gpudiag check {check_median:.3f} s, import tensorflow {tf_median:.3f} s: ratio "
        f"{ratio:.3f} (target < {MAX_RATIO}; medians of {ROUNDS}, alternating); driver: {driver['message']}"
    )
    assert len(tf_times) == len(reports) == ROUNDS
    assert ratio < MAX_RATIO, f"gpudiag check {check_median:.3f} s vs import tensorflow {tf_median:.3f} s"

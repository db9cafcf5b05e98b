"""`gpudiag check` (no --deep) against `python -c "import tensorflow"` on the same machine, side by side.

The promise: a check takes less than 0.15 x a TensorFlow import, because it never imports TensorFlow.
Both are timed as whole processes (interpreter start included), median of several rounds; the ratio
goes into benchmark.extra_info for the report.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURE = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "inv-workstation-2x5090-display.json"
)
ROUNDS = 5
MAX_RATIO = 0.15


def _gpudiag() -> list[str]:
    script = shutil.which("gpudiag")
    return [script] if script else [sys.executable, "-m", "diagnostics"]


def _wall(cmd: list[str]) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True, env=env, timeout=300)
    return time.perf_counter() - start


@pytest.mark.benchmark(group="gpudiag")
def test_gpudiag_check_vs_import_tensorflow(benchmark):
    check_cmd = [*_gpudiag(), "check", "--inventory", str(FIXTURE), "--json"]
    tf_cmd = [sys.executable, "-c", "import tensorflow"]
    _wall(tf_cmd)  # warm the file cache for both, so neither pays for a cold disk
    _wall(check_cmd)
    tf_times = [_wall(tf_cmd) for _ in range(ROUNDS)]
    benchmark.pedantic(
        lambda: subprocess.run(check_cmd, check=False, capture_output=True), rounds=ROUNDS, warmup_rounds=1
    )
    check_median = statistics.median(benchmark.stats.stats.data)
    tf_median = statistics.median(tf_times)
    ratio = check_median / tf_median
    benchmark.extra_info.update(
        {
            "gpudiag_check_median_s": round(check_median, 4),
            "import_tensorflow_median_s": round(tf_median, 4),
            "ratio": round(ratio, 4),
            "rounds": ROUNDS,
            "command": " ".join(check_cmd),
        }
    )
    print(
        f"\ngpudiag check {check_median:.3f} s, import tensorflow {tf_median:.3f} s: ratio {ratio:.3f} "
        f"(target < {MAX_RATIO}; medians of {ROUNDS})"
    )
    assert ratio < MAX_RATIO, f"gpudiag check {check_median:.3f} s vs import tensorflow {tf_median:.3f} s"

"""The Python API in a user's own script, each run in a child process (one device set per
process): examples/fit_with_strategy.py trains with `model.fit` on 2 CPU replicas and measures its
throughput; `training.setup_device_strategy()` after a TensorFlow operation is refused.

The two children run side by side: each costs a TensorFlow start.
"""

from __future__ import annotations

import re

import pytest
from support import ROOT, child_env, finish, start_child

pytestmark = pytest.mark.slow

LATE = """
import tensorflow as tf
tf.constant(1.0) + 1.0  # any operation starts TensorFlow's runtime
import training
from training.devices.setup import LateSetupError
try:
    training.setup_device_strategy(cpu_replicas=2)
except LateSetupError as exc:
    print("late:", exc)
else:
    raise SystemExit("setup_device_strategy() ran after a TensorFlow operation")
"""
NUMBERS = re.compile(
    r"replicas=(\d+) samples_per_sec=([\d.]+) per_replica=([\d.]+) interval=\(([\d.]+), ([\d.]+)\)"
)


def test_example_trains_on_two_cpu_replicas_and_late_setup_is_refused():
    """The example ends 0 on 2 replicas with positive numbers whose interval holds the median; a
    setup after an operation raises LateSetupError saying what to move."""
    example = start_child(str(ROOT / "examples" / "fit_with_strategy.py"), env=child_env(CPU_REPLICAS="2"))
    late = start_child("-c", LATE)
    code, out, err = finish(example)
    late_code, late_out, late_err = finish(late)

    assert code == 0, err
    assert "plan: 2 replica(s) on the CPU, MirroredStrategy" in out
    assert "global batch 64 = 32 per replica x 2" in out
    line = [text for text in out.splitlines() if text.startswith("throughput: ")]
    assert len(line) == 1 and "(fewer than 6" not in line[0], out
    assert "2 replicas), 95% CI [" in line[0] and "after 5 warm-up" in line[0]
    found = NUMBERS.search(out)
    assert found, out
    replicas, total, per_replica, low, high = (float(v) for v in found.groups())
    assert replicas == 2
    assert total > 0 and per_replica == pytest.approx(total / 2, rel=1e-3)
    assert 0 < low <= total <= high

    assert late_code == 0, late_err
    assert "late: TensorFlow's runtime was already initialised" in late_out
    assert "before any TensorFlow operation" in late_out

"""--accumulate-steps for real: 2 CPU replicas, the same steps at K=1 and K=4 micro-batches, and a
K=4 run resumed from its checkpoint (tests/helpers/accumulate_run.py, one child process)."""

from __future__ import annotations

import json

import pytest
from support import run_helper

pytestmark = pytest.mark.slow


def test_micro_batches_give_the_whole_batch_update_and_resume_bit_for_bit(tmp_path):
    proc = run_helper("accumulate_run.py", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # Summing four micro-batches' gradients reorders float32 additions, nothing else: the weights
    # stay within rounding of one batch's. A wrong accumulation (a mean instead of a sum, a micro-
    # batch left out or counted twice) moves them by a sizeable part of what training moved them.
    assert got["moved"] > 0.1, got
    assert got["k4_vs_k1"] < 1e-4 * got["moved"], got
    # several steps per traced call still apply (3 per call over 8 steps), with accumulation too
    assert got["calls"] == {"1": [3, 3, 2], "4": [3, 3, 2]}
    # stopped at its checkpoint after step 4 and resumed in a new Trainer: the same weights
    assert got["resumed_vs_k4"] == 0.0, got

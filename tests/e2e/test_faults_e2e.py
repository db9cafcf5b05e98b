"""NaN, out-of-memory and --auto-batch-size in real training processes, by fault injection
(GPUDIAG_FAULT): real out-of-memory cannot be produced safely on a test machine.

The three runs start together (a module fixture) so that their TensorFlow starts overlap.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import start_training

from training.checkpoints.store import CheckpointStore

pytestmark = pytest.mark.slow

BASE = ["--cpu-replicas", "2", "--model", "mlp", "--epochs", "2", "--steps-per-epoch", "4", "-q"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[int, str, str, Path]]:
    folder = tmp_path_factory.mktemp("faults")
    plans = {
        "nan": (
            [*BASE, "--global-batch-size", "64", "--checkpoint-dir", str(folder / "nan"), "--save-freq", "2"],
            "nan_at_step=5",
        ),
        "oom": ([*BASE, "--global-batch-size", "64"], "oom_above_batch=16"),
        # per replica: 64 fits, 128 does not, 96 fits, 112 and 104 do not: 96, in 5 tries
        "auto": (
            [*BASE, "--auto-batch-size", "--summary-json", str(folder / "auto.json")],
            "oom_above_batch=100",
        ),
    }
    procs = {name: start_training(args, fault) for name, (args, fault) in plans.items()}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=400)
        done[name] = (proc.returncode, out, err, folder)
    return done


def test_nan_loss_exits_1_naming_the_step_and_keeping_the_last_good_checkpoint(runs):
    code, _out, err, folder = runs["nan"]
    assert code == 1, err[-3000:]
    kept = f"{folder}/nan/ckpt-00000004"
    assert (
        f"error: loss became nan at step 5: training stopped; the last good checkpoint, {kept}, is kept"
        in err
    )
    assert "Traceback" not in err
    found = CheckpointStore(folder / "nan").restore_latest(lambda w: pytest.fail(w))
    assert found is not None and found.manifest.global_step == 4  # nothing written after the NaN


def test_out_of_memory_exits_1_naming_the_batches(runs):
    code, _out, err, _folder = runs["oom"]
    assert code == 1, err[-3000:]
    assert "error: out of memory at global batch 64 (32 per replica x 2 replicas)" in err
    assert "the next smaller valid batch is --global-batch-size 62 (31 per replica)" in err
    assert "Traceback" not in err


def test_auto_batch_size_finds_the_injected_limit_and_trains_with_it(runs):
    code, out, err, folder = runs["auto"]
    assert code == 0, err[-3000:]
    tries = [line for line in err.splitlines() if line.startswith("--auto-batch-size: per-replica batch")]
    assert tries == [
        "--auto-batch-size: per-replica batch 64 fits",
        "--auto-batch-size: per-replica batch 128 does not fit",
        "--auto-batch-size: per-replica batch 96 fits",
        "--auto-batch-size: per-replica batch 112 does not fit",
        "--auto-batch-size: per-replica batch 104 does not fit",
    ]
    assert "largest per-replica batch that fits: 96 (global 192), found in 5 tries" in out
    summary = json.loads((folder / "auto.json").read_text())
    assert summary["global_batch_size"] == 192 and summary["per_replica_batch_size"] == 96
    assert summary["steps"] == 8

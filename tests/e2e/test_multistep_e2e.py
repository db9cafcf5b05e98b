"""Several steps per traced call inside the real Trainer (tests/helpers/trainer_chunks.py, one child
process, 2 CPU replicas): --steps-per-execution 1, 7, auto and a K cut by --save-freq end with the
same weights bit for bit, callbacks see every step, checkpoints land on the steps they name, and a
SIGTERM takes effect at the end of the chunk it arrived in. Then the flag's bad values."""

from __future__ import annotations

import json

import pytest
from support import run_helper, run_module

from training.settings.config import TrainConfig

STEPS, EPOCHS = 11, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("chunks")
    proc = run_helper("trainer_chunks.py", str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["k7", "auto", "k4_save3"])
def test_every_k_ends_with_the_weights_of_one_step_per_call_bit_for_bit(runs, name):
    assert runs["k1"]["from_initial"] > 1e-3  # training moved the weights: equality means something
    assert runs[name]["max_diff"] == 0.0
    assert runs[name]["global_step"] == STEPS * EPOCHS
    assert runs[name]["ended"] == list(range(STEPS)) * EPOCHS  # every step's logs, in order


@pytest.mark.slow
def test_chunks_end_at_the_epoch_and_at_each_checkpoint(runs):
    assert runs["k1"]["chunks"] == [1] * STEPS * EPOCHS
    assert runs["k7"]["chunks"] == [7, 4, 7, 4]
    # --save-freq 3, K=4: 3 3 3 | 2 (epoch end at 11) | 1 (save after 12) 3 3 3 | 1 (22, the end)
    assert runs["k4_save3"]["chunks"] == [3, 3, 3, 2, 1, 3, 3, 3, 1]
    assert runs["k4_save3"]["checkpoints"] == ["ckpt-00000018.npz", "ckpt-00000021.npz", "ckpt-00000022.npz"]


@pytest.mark.slow
def test_sigterm_during_a_chunk_stops_at_its_end_with_a_checkpoint_of_that_step(runs):
    """SIGTERM while the callbacks replay step 2 of a 5-step call: the steps already run are
    counted and saved, and nothing after the call runs."""
    run = runs["sigterm"]
    assert run["stopped"]["signal"] == 15
    assert run["chunks"] == [5] and run["global_step"] == 5 and run["ended"] == [0, 1, 2, 3, 4]
    assert run["checkpoints"] == ["ckpt-00000005.npz"]
    assert run["stopped"]["checkpoint"].endswith("ckpt-00000005")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--steps-per-execution must be from 1 to 1000 steps (or 'auto'), got '0'"),
        ("x", "--steps-per-execution must be 'auto' or a number of steps >= 1, got 'x'"),
    ],
)
def test_bad_steps_per_execution_is_one_line_and_exit_2_before_tensorflow(value, message):
    result = run_module("training", "--cpu-replicas", "2", "--steps-per-execution", value, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"error: {message}\n"


def test_a_config_file_may_give_steps_per_execution_as_a_number():
    assert TrainConfig().merged({"steps_per_execution": 20}, "train.toml").steps_per_execution == "20"
    assert TrainConfig().merged({"steps-per-execution": "auto"}, "train.toml").steps_per_execution == "auto"

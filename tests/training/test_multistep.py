"""training.loop.steps: several steps per traced call. The choice of K without TensorFlow; then, in
one child process on 2 CPU replicas with a tiny model and no Trainer (tests/helpers/multistep_run.py):
K=1, K=5 and K=auto end with the same weights as one step per call, every step's logs reach the
callbacks, and a NaN is reported at the step it happened with no step run after it."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from support import ROOT, child_env

from training.loop import steps as ms

# -- the flag -----------------------------------------------------------------------------------


def test_parse_takes_auto_or_a_positive_number():
    assert ms.parse_steps_per_execution("auto") == "auto"
    assert ms.parse_steps_per_execution(" AUTO ") == "auto"
    assert ms.parse_steps_per_execution("20") == 20
    assert ms.parse_steps_per_execution(1) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "--steps-per-execution must be from 1 to 1000 steps (or 'auto'), got '0'"),
        ("-3", "--steps-per-execution must be from 1 to 1000 steps (or 'auto'), got '-3'"),
        ("many", "--steps-per-execution must be 'auto' or a number of steps >= 1, got 'many'"),
        ("2.5", "--steps-per-execution must be 'auto' or a number of steps >= 1, got '2.5'"),
        ("5000", "--steps-per-execution must be from 1 to 1000 steps (or 'auto'), got '5000'"),
    ],
)
def test_parse_refuses_zero_and_what_is_not_a_number_in_one_line(text, message):
    with pytest.raises(ValueError) as caught:
        ms.parse_steps_per_execution(text)
    assert str(caught.value) == message


# -- where chunks end -----------------------------------------------------------------------------


def test_chunks_end_at_the_epoch_and_at_every_step_checkpoint():
    assert ms.chunk_steps(50, 0, 120, 0, None) == 50
    assert ms.chunk_steps(50, 100, 120, 100, None) == 20  # the epoch's last 20 steps
    assert ms.chunk_steps(50, 0, 120, 0, 30) == 30  # --save-freq 30 saves after step 30
    assert ms.chunk_steps(50, 10, 120, 130, 30) == 20  # global step 130: the next save is after 150
    assert ms.chunk_steps(50, 10, 120, 150, 30) == 30
    assert ms.chunk_steps(1, 5, 120, 5, 30) == 1


def test_a_fixed_k_is_cut_at_boundaries_and_never_changes():
    spe = ms.StepsPerExecution("8", steps_per_epoch=20)
    spe.observe(8, 100.0)  # a slow call does not change a fixed K
    sizes, step = [], 0
    while step < 20:
        sizes.append(spe.next_chunk(step, 20, step, 6))
        step += sizes[-1]
    assert sizes == [6, 6, 6, 2] and spe.auto is None


# -- auto -------------------------------------------------------------------------------------------


def test_auto_aims_at_a_host_sync_every_150_ms():
    assert ms.choose_k(0.001) == 150  # 1 ms steps: 150 per call
    assert ms.choose_k(0.05) == 3
    assert ms.choose_k(0.5) == 1  # a step slower than the target: one per call
    assert ms.choose_k(1e-6) == ms.MAX_STEPS
    assert ms.choose_k(0.001, limit=30) == 30  # capped by the epoch length


def test_auto_ignores_the_tracing_call_then_follows_the_measured_step_time():
    auto = ms.AutoSteps(limit=500)
    assert auto.next_k() == 1
    auto.observe(1, 5.0)  # the first call traces: not a measurement
    assert auto.next_k() == 1
    auto.observe(1, 0.002)  # 2 ms per step
    assert auto.next_k() == 75
    auto.observe(75, 0.1)  # 1.3 ms per step: 100 ms per call, inside [50, 200] ms: kept
    assert auto.next_k() == 75
    auto.observe(75, 0.75)  # 10 ms per step: 750 ms per call, too long for the progress bar
    assert auto.next_k() == 15
    auto.observe(3, 0.003)  # a call cut short at the epoch's end still measures: 1 ms per step
    assert auto.next_k() == 150


def test_auto_is_capped_by_the_epoch_length():
    spe = ms.StepsPerExecution("auto", steps_per_epoch=12)
    spe.observe(1, 1.0)
    spe.observe(1, 1e-5)
    assert spe.next_chunk(0, 12, 0, None) == 12


def test_first_non_finite():
    assert ms.first_non_finite([1.0, 2.0]) is None
    assert ms.first_non_finite([1.0, float("nan"), float("inf")]) == 1


# -- the traced function, for real ------------------------------------------------------------------


def running_means(losses: list[float], steps_per_epoch: int) -> list[float]:
    out = []
    for i in range(len(losses)):
        first = i - i % steps_per_epoch
        out.append(sum(losses[first : i + 1]) / (i + 1 - first))
    return out


@pytest.fixture(scope="module")
def child() -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "multistep_run.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["k1", "k5", "auto"])
def test_every_k_ends_with_the_weights_and_per_step_logs_of_one_step_per_call(child, name):
    """2 epochs of 12 steps on 2 replicas, --save-freq 7: the same weights as the hand loop (one step
    per call), and the callbacks saw every step's loss, in order."""
    run = child[name]
    assert run["max_weight_diff"] <= 1e-6
    assert run["logged_steps"] == list(range(12)) * 2
    # the logs are the epoch's running mean loss, as the trainer's progress bar shows it
    assert run["logged_losses"] == pytest.approx(running_means(child["reference_losses"], 12), rel=1e-6)
    assert sum(run["chunks"]) == 24


@pytest.mark.slow
def test_chunks_end_at_epochs_and_checkpoints_and_auto_grows_k(child):
    assert child["k1"]["chunks"] == [1] * 24
    # steps 1-5, 6-7 (save after 7), 8-12 (epoch end), 13-14 (save after 14), 15-19, 20-21, 22-24
    assert child["k5"]["chunks"] == [5, 2, 5, 2, 5, 2, 3]
    auto = child["auto"]["chunks"]
    assert auto[:2] == [1, 1]  # tracing, then one measured call at K=1
    assert max(auto) > 1 and child["auto"]["auto_k"] > 1


@pytest.mark.slow
def test_a_nan_is_reported_at_its_step_and_no_step_runs_after_it(child):
    """Batch 10 holds NaNs, which make its loss NaN inside the traced step (on every machine: not
    through the layers, whose kernels may turn NaN into 0), K=4: the third call stops after step
    10 and comes back with 2 rows."""
    nan = child["nan"]
    assert nan["chunks"] == [4, 4, 2]
    assert nan["diverged_at"] == nan["global_step"] == nan["steps_run"] == 10
    # callbacks saw steps 1-9 end; step 10 began and raised, as with one step per call
    assert len(nan["logged_losses"]) == 9 and all(math.isfinite(v) for v in nan["logged_losses"])


@pytest.mark.slow
def test_an_injected_nan_cuts_the_chunk_at_its_step(child):
    """GPUDIAG_FAULT=nan_at_step=6 with K=4: calls of 4 and 2 steps, stopped at step 6."""
    fault = child["fault_nan"]
    assert fault["chunks"] == [4, 2] and fault["diverged_at"] == fault["global_step"] == 6
    assert fault["steps_run"] == 6 and len(fault["logged_losses"]) == 5


@pytest.mark.slow
def test_the_meter_counts_every_step_of_a_chunk(child):
    assert child["k5"]["meter_steps"] == 24


def test_chunks_also_end_after_the_steps_a_fault_acts_after():
    """GPUDIAG_FAULT's nan_at_step / kill_after_step act after one global step: a chunk ends there."""
    assert ms.chunk_steps(50, 0, 120, 0, None, cut_after=(7, None)) == 7
    assert ms.chunk_steps(50, 10, 120, 10, None, cut_after=(7, 30)) == 20  # step 7 is behind
    assert ms.chunk_steps(50, 0, 120, 0, 5, cut_after=(7,)) == 5

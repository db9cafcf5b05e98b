"""Validation and evaluation for real: MirroredStrategy over CPU logical devices in child processes
(one device set per process), on scikit-learn's digits (8x8 images of 10 digits, shipped with the
package) and on synthetic data.

- the trainer with --validation-split: val_loss and val_accuracy in the progress bar, history,
  summary and TensorBoard; the saved model evaluated by `python -m training evaluate` on 1, 2 and 4
  replicas gives the same numbers, with a last batch of 3 examples (padded: no replica is empty);
- what each of 4 replicas receives when the data leave a remainder of 3: in evaluation every
  share is full and every example is counted once, in training every share is full, and an
  Evaluator's figures are NumPy's;
- Keras callbacks (EarlyStopping and ModelCheckpoint on val_loss) and the scaled, warmed-up rate,
  step by step, on 1, 2 and 4 replicas, whose validation figures agree;
- a run killed mid-epoch during its warm-up and resumed ends as the uninterrupted one, bit for bit,
  validation figures included.

Each process costs a TensorFlow start, so the processes of a test run side by side.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, child_env, finish, start_training

from training.inputs import data, validation
from training.loop.learning_rate import rate_plan
from training.settings.config import TrainConfig

pytestmark = pytest.mark.slow


def digits_npz(path: Path) -> str:
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(path, x=(digits.images / 16.0).astype(np.float32), y=digits.target)
    return str(path)


def start(args: list[str], fault: str = "") -> subprocess.Popen[str]:
    return start_training(args, fault)


def test_validation_in_training_and_evaluate_on_1_2_and_4_replicas(tmp_path):
    digits = digits_npz(tmp_path / "digits.npz")
    code, out, err = finish(
        start(
            [
                "--data", digits, "--validation-split", "0.2", "--optimizer", "adam", "--epochs", "3",
                "--cpu-replicas", "2", "--global-batch-size", "64", "--save-model", str(tmp_path / "m.keras"),
                "--summary-json", str(tmp_path / "train.json"), "--log-dir", str(tmp_path / "tb"),
            ]
        )
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "validation: 20% of the data held out, evaluated after each epoch" in err
    assert "optimizer adam, learning rate 0.001 (adam's default)" in err
    assert "val_loss" in out and "val_accuracy" in out  # the progress bar's epoch line
    assert "final_val_accuracy" in out and "held out (359 examples)" in out  # the summary table
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["examples"] == 1438 and summary["validation_examples"] == 359
    assert summary["learning_rate"] == summary["base_learning_rate"] == 0.001
    assert [sorted(h) for h in summary["history"]] == [
        ["accuracy", "epoch", "loss", "val_accuracy", "val_loss"]
    ] * 3
    assert summary["final_val_loss"] == summary["history"][-1]["val_loss"]
    assert summary["final_val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert list((tmp_path / "tb" / "validation").glob("events.out.tfevents.*")), "no validation logs"

    # the same held-out examples (the split is seeded) in a file of their own; a global batch of
    # 356 leaves a last batch of 3 examples: unpadded, one of 4 replicas would get none
    _train, held_out = validation.split(data.load(digits, seed=42), 0.2, seed=42, global_batch_size=64)
    np.savez(tmp_path / "val.npz", x=held_out.x, y=held_out.y)
    procs = {
        n: subprocess.Popen(
            [
                sys.executable, "-m", "training", "evaluate", str(tmp_path / "m.keras"),
                "--data", str(tmp_path / "val.npz"), "--cpu-replicas", str(n), "--global-batch-size", "356",
                "--summary-json", str(tmp_path / f"eval{n}.json"),
            ],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in (1, 2, 4)
    }  # fmt: skip
    results = {}
    for n, proc in procs.items():
        code, out, err = finish(proc)
        assert code == 0, (n, err[-3000:])
        assert "accuracy" in out and f"summary written to {tmp_path / f'eval{n}.json'}" in out
        results[n] = json.loads((tmp_path / f"eval{n}.json").read_text())
    for n, result in results.items():
        assert result["replicas"] == n and result["examples"] == 359 and result["batches"] == 2
        # the same examples, each counted once, whatever the spread; sums in float64
        assert result["accuracy"] == results[1]["accuracy"], n
        assert result["loss"] == pytest.approx(results[1]["loss"], rel=1e-6), n
        # and the figures the trainer printed for its last epoch, with a batch of 64 on 2 replicas
        assert result["loss"] == pytest.approx(summary["final_val_loss"], rel=1e-5), n
        assert result["accuracy"] == summary["final_val_accuracy"], n


def test_no_replica_gets_an_empty_or_ragged_batch_and_the_figures_are_exact():
    """4 replicas, a global batch of 8, 19 examples: 2 full batches and a remainder of 3. A
    replica's empty share fails in some machines' kernels (and ragged ones differ between them),
    so the check is on the shares themselves, whatever this machine's kernels make of them."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/helpers/validation_run.py"), "--shares", "4"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["global_batch"] == 8 and got["examples"] == 19
    # evaluation: 3 batches of 2 per replica, the last padded with 5 copies of weight 0
    assert got["eval_shares"] == [[2, 2, 2, 2]] * 3
    assert sorted(got["counted"]) == list(range(19)) and got["padded"] == 5
    # training, for more steps than the data hold: every share full
    assert got["train_shares"] == [[2, 2, 2, 2]] * len(got["train_shares"]) and len(got["train_shares"]) > 3
    # the padding weighs nothing: the mean over the 19 examples, as NumPy computes it in float64
    # from one device's float32 logits (float32 rounding apart, about 1e-7)
    assert got["evaluated"]["loss"] == pytest.approx(got["expected"]["loss"], rel=1e-5)
    assert got["evaluated"]["accuracy"] == got["expected"]["accuracy"]


def test_callbacks_see_val_loss_and_the_rate_follows_the_schedule_on_1_2_and_4_replicas(tmp_path):
    """tests/helpers/validation_run.py: 750 examples to train on, 250 held out, plain SGD at its
    default 0.01 scaled to 0.02 for a global batch of 128 over 64, warmed up over the first epoch."""
    procs = {}
    for n in (1, 2, 4):
        (tmp_path / str(n)).mkdir()
        procs[n] = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/helpers/validation_run.py"), str(n), str(tmp_path / str(n))],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    summaries = {}
    for n, proc in procs.items():
        code, _out, err = finish(proc)
        assert code == 0, (n, err[-3000:])
        summaries[n] = json.loads((tmp_path / str(n) / "summary.json").read_text())
    plan = rate_plan(
        replace(
            TrainConfig(),
            optimizer="plain-sgd",
            global_batch_size=128,
            scale_learning_rate="linear",
            reference_batch_size=64,
            warmup_epochs=1.0,
        )
    )
    expected = [plan.rate_at(step, 5) for step in range(10)]
    assert expected[0] == pytest.approx(0.01) and expected[5:] == [pytest.approx(0.02)] * 5
    for n, summary in summaries.items():
        # EarlyStopping(monitor="val_loss", patience=1, min_delta=10) stops after epoch 2 only if it
        # sees val_loss; ModelCheckpoint(save_best_only) writes only if it sees it
        assert summary["stopped_early"] is True and summary["epochs"] == 2, n
        assert (tmp_path / str(n) / "best.keras").is_file(), n
        assert list((tmp_path / str(n) / "tb" / "validation").glob("events.out.tfevents.*")), n
        assert summary["validation_examples"] == 250 and summary["examples"] == 750
        assert summary["learning_rate"] == pytest.approx(0.02) and summary["base_learning_rate"] == 0.01
        assert summary["warmup_learning_rate_steps"] == 5
        assert summary["rates"] == pytest.approx(expected, rel=1e-6), n
    reference = summaries[1]["history"]
    assert reference[1]["val_loss"] < reference[0]["val_loss"]  # it learns
    for n in (2, 4):
        for mine, theirs in zip(summaries[n]["history"], reference, strict=True):
            # the weights agree to float32 rounding (about 1e-6), the evaluation itself exactly
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4), n
            assert abs(mine["val_accuracy"] - theirs["val_accuracy"]) <= 1 / 250, n


EPOCHS, STEPS = 3, 22  # digits: 1438 examples to train on in batches of 64, 359 held out
FINAL = EPOCHS * STEPS


def resume_args(directory: Path, digits: str) -> list[str]:
    directory.mkdir(exist_ok=True)
    return [
        "--data", digits, "--model", "mlp", "--validation-split", "0.2", "--global-batch-size", "64",
        "--epochs", str(EPOCHS), "--seed", "7", "-q", "--cpu-replicas", "2",
        "--scale-learning-rate", "sqrt", "--reference-batch-size", "16", "--warmup-epochs", "1.5",
        "--checkpoint-dir", str(directory / "ckpt"), "--save-freq", "4",
        "--summary-json", str(directory / "summary.json"),
    ]  # fmt: skip


def final_weights(directory: Path) -> list[np.ndarray]:
    with np.load(directory / "ckpt" / f"ckpt-{FINAL:08d}.npz") as archive:
        return [archive[k] for k in sorted(archive.files, key=lambda k: int(k[1:]))]


def test_a_run_killed_mid_warmup_resumes_with_its_validation_and_schedule(tmp_path):
    """Killed after step 30 (epoch 2, inside the 33-step warm-up), resumed from step 28: the same
    weights, bit for bit, and the same history, validation figures included."""
    digits = digits_npz(tmp_path / "digits.npz")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    procs = {
        "ref": start(resume_args(ref, digits)),
        "killed": start(resume_args(killed, digits), "kill_after_step=30"),
    }
    codes = {name: finish(proc) for name, proc in procs.items()}
    assert codes["ref"][0] == 0, codes["ref"][2][-3000:]
    assert codes["killed"][0] == -signal.SIGKILL, codes["killed"][2][-3000:]
    assert "(33 steps) from 0.01" in codes["ref"][2]  # sqrt(64/16) x 0.01 = 0.02, from 0.01
    code, _out, err = finish(start(resume_args(killed, digits)))
    assert code == 0, err[-3000:]
    assert f"resuming from checkpoint {killed}/ckpt/ckpt-00000028 (epoch 2, step 6, global step 28)" in err
    want = json.loads((ref / "summary.json").read_text())
    got = json.loads((killed / "summary.json").read_text())
    assert got["steps"] == FINAL and got["steps_this_run"] == FINAL - 28
    assert got["history"] == want["history"]
    assert [sorted(h) for h in got["history"]] == [
        ["accuracy", "epoch", "loss", "val_accuracy", "val_loss"]
    ] * 3
    for i, (g, w) in enumerate(zip(final_weights(killed), final_weights(ref), strict=True)):
        assert np.array_equal(g, w), f"weights {i} differ from the uninterrupted run"

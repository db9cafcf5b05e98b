"""Kill real training processes and resume them: SIGKILL between epochs, mid-epoch and halfway
through a checkpoint write; SIGTERM and SIGINT. Two CPU replicas, MirroredStrategy for real.

Each process costs a TensorFlow start, so the runs of a test go side by side where they can.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from support import start_training

from training.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow

EPOCHS, STEPS = 3, 6
FINAL = EPOCHS * STEPS


def train_args(directory: Path, save_freq: str = "epoch") -> list[str]:
    directory.mkdir(exist_ok=True)
    return [
        "--cpu-replicas", "2", "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS),
        "--global-batch-size", "64", "--seed", "7", "-q",
        "--checkpoint-dir", str(directory / "ckpt"), "--save-freq", save_freq,
        "--summary-json", str(directory / "summary.json"),
    ]  # fmt: skip


start = start_training


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"process ended ({proc.returncode}) before {path.name}: {err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.05)


def newest_step(directory: Path) -> int | None:
    found = CheckpointStore(directory / "ckpt").peek()
    return found.manifest.global_step if found else None


def final_weights(directory: Path) -> list[np.ndarray]:
    with np.load(directory / "ckpt" / f"ckpt-{FINAL:08d}.npz") as archive:
        return [archive[k] for k in sorted(archive.files, key=lambda k: int(k[1:]))]


def assert_same_weights(got: list[np.ndarray], want: list[np.ndarray], label: str) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        rel = np.linalg.norm(g.astype(np.float64) - w) / max(np.linalg.norm(w.astype(np.float64)), 1e-12)
        assert rel <= 1e-6, f"{label}: weights differ from the uninterrupted run by {rel:.2e}"


def test_killed_runs_resume_and_lose_nothing(tmp_path):
    """SIGKILL between epochs, mid-epoch and mid-checkpoint-write; each resumes with the same
    command, says so, finishes, and ends with the uninterrupted run's weights."""
    dirs = {name: tmp_path / name for name in ("ref", "between", "during", "mid")}
    args = {name: train_args(d) for name, d in dirs.items()}
    args["mid"] = train_args(dirs["mid"], save_freq="2")
    procs = {
        "ref": start(args["ref"]),
        # right after epoch 1 and its checkpoint: the between-epochs case
        "between": start(args["between"], "kill_after_step=6"),
        # halfway through writing the second checkpoint (end of epoch 2)
        "during": start(args["during"], "kill_during_checkpoint=2"),
        # slowed down and killed from outside, mid-epoch, once a few checkpoints exist
        "mid": start(args["mid"], "sleep_per_step=0.25"),
    }
    wait_for_file(dirs["mid"] / "ckpt" / "ckpt-00000008.json", procs["mid"])
    procs["mid"].send_signal(signal.SIGKILL)
    codes = {name: finish(proc) for name, proc in procs.items()}
    assert codes["ref"][0] == 0, codes["ref"][2][-3000:]
    for name in ("between", "during", "mid"):
        assert codes[name][0] == -signal.SIGKILL, (name, codes[name][2][-3000:])
        assert not (dirs[name] / "summary.json").exists()
    assert newest_step(dirs["between"]) == 6
    assert newest_step(dirs["during"]) == 6
    assert list((dirs["during"] / "ckpt").glob(".ckpt-00000012.*.tmp"))  # the half-written file
    assert not list((dirs["during"] / "ckpt").glob("ckpt-00000012.*"))
    killed_at = newest_step(dirs["mid"])
    # killed within a step or two of checkpoint 8 (epoch 2, step 2): mid-epoch, nearly always
    assert killed_at is not None and 8 <= killed_at < FINAL

    resumed = {name: start(args[name]) for name in ("between", "during", "mid")}
    results = {name: finish(proc) for name, proc in resumed.items()}
    expected = {
        "between": "ckpt-00000006 (after epoch 1, global step 6)",
        "during": "ckpt-00000006 (after epoch 1, global step 6)",
        "mid": f"ckpt-{killed_at:08d} (",
    }
    reference = final_weights(dirs["ref"])
    for name, (code, _out, err) in results.items():
        assert code == 0, (name, err[-3000:])
        assert f"resuming from checkpoint {dirs[name]}/ckpt/{expected[name]}" in err, (name, err[-2000:])
        summary = json.loads((dirs[name] / "summary.json").read_text())
        assert summary["steps"] == FINAL and summary["epochs"] == EPOCHS
        assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
        assert summary["resumed_from"].endswith(expected[name].split(" ")[0])
        assert_same_weights(final_weights(dirs[name]), reference, name)
    assert not list((dirs["during"] / "ckpt").glob(".*.tmp"))  # cleaned up by the next save
    ref_summary = json.loads((dirs["ref"] / "summary.json").read_text())
    between_summary = json.loads((dirs["between"] / "summary.json").read_text())
    assert between_summary["history"][0] == ref_summary["history"][0]  # epoch 1's logs survive the kill
    assert between_summary["steps_this_run"] == FINAL - 6


def test_sigterm_and_sigint_stop_after_a_step_with_a_usable_checkpoint(tmp_path):
    """SIGTERM: exit 143, a checkpoint, a resume line; the resumed run stops on SIGINT with 130;
    the third run finishes from there."""
    args = train_args(tmp_path, save_freq="4")
    command = shlex.join(["python", "-m", "training", *args])
    proc = start(args, "sleep_per_step=0.3")
    wait_for_file(tmp_path / "ckpt" / "ckpt-00000004.json", proc)
    proc.send_signal(signal.SIGTERM)
    code, _out, err = finish(proc)
    assert code == 143, err[-3000:]
    stopped = newest_step(tmp_path)
    assert stopped is not None and stopped >= 4
    checkpoint = f"{tmp_path}/ckpt/ckpt-{stopped:08d}"
    assert f"stopped by SIGTERM after global step {stopped}; checkpoint {checkpoint} written" in err
    assert f"resume with: {command}" in err
    assert "Traceback" not in err

    proc = start(args, "sleep_per_step=0.3")
    wait_for_file(tmp_path / "ckpt" / f"ckpt-{(stopped // 4 + 1) * 4:08d}.json", proc)
    proc.send_signal(signal.SIGINT)
    code, _out, err = finish(proc)
    assert code == 130, err[-3000:]
    assert f"resuming from checkpoint {tmp_path}/ckpt/ckpt-{stopped:08d}" in err
    interrupted = newest_step(tmp_path)
    assert interrupted is not None and interrupted > stopped
    assert f"stopped by SIGINT after global step {interrupted}" in err and "Traceback" not in err

    code, _out, err = finish(start(args))
    assert code == 0, err[-3000:]
    assert f"resuming from checkpoint {tmp_path}/ckpt/ckpt-{interrupted:08d}" in err
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == FINAL

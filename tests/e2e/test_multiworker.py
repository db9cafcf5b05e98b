"""Multi-worker training on MultiWorkerMirroredStrategy with real worker processes on localhost
(CPU replicas, loopback only, every wait bounded): the same weights as one process with as many
replicas, the chief as the only writer, a killed worker, resume, SIGTERM to one worker, the local
launcher's exit codes; then each bad input, which ends before TensorFlow (in this process).

Each worker costs a TensorFlow start, so the runs of a test go side by side where they can.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from support import child_env, finish, start_child

from training.__main__ import main
from training.devices.launcher import free_ports

EPOCHS, STEPS = 2, 6
FINAL = EPOCHS * STEPS


def train_args(directory: Path, *extra: str) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        "--model", "mlp", "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS),
        "--global-batch-size", "64", "--seed", "7", "-q", "--checkpoint-dir", str(directory / "ckpt"),
        "--collective-timeout", "60", *extra,
    ]  # fmt: skip


def start(args: list[str], **env: str) -> subprocess.Popen[str]:
    return start_child("-m", "training", *args, env=child_env(**env))


def start_workers(args: list[str], faults: tuple[str, ...] = ("", "")) -> list[subprocess.Popen[str]]:
    """Two workers started by hand, as on two machines: each with its own TF_CONFIG."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [
        start(
            args,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            GPUDIAG_FAULT=fault,
        )
        for i, fault in enumerate(faults)
    ]


def weights(directory: Path, step: int = FINAL) -> list[np.ndarray]:
    with np.load(directory / "ckpt" / f"ckpt-{step:08d}.npz") as archive:
        return [archive[k] for k in sorted(archive.files, key=lambda k: int(k[1:]))]


def relative_difference(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert len(got) == len(want)
    return max(
        float(np.linalg.norm(g.astype(np.float64) - w) / max(np.linalg.norm(w.astype(np.float64)), 1e-12))
        for g, w in zip(got, want, strict=True)
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, 2 CPU replicas, uninterrupted: what every multi-worker run must end with."""
    directory = tmp_path_factory.mktemp("reference")
    code, _out, err = finish(start([*train_args(directory), "--cpu-replicas", "2"]))
    assert code == 0, err[-3000:]
    return directory


@pytest.mark.slow
def test_two_local_workers_train_like_one_process_and_only_the_chief_writes(tmp_path, reference):
    run = tmp_path / "run"
    outputs = [
        "--summary-json", str(tmp_path / "summary.json"), "--save-model", str(tmp_path / "model.keras"),
        "--log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    code, out, err = finish(start([*train_args(run), *outputs, "--local-workers", "2"]))
    assert code == 0, err[-3000:]
    assert relative_difference(weights(run), weights(reference)) < 1e-4
    # the launcher prefixes each worker's output; only worker 0, the chief, wrote anything
    assert "[worker 0] summary written to" in out and "[worker 1] summary written" not in out
    assert "[worker 0] [worker 0] 127.0.0.1:" in err and "(chief: writes" in err
    assert "[worker 1] [worker 1] 127.0.0.1:" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["replicas"] == 2 and summary["steps"] == FINAL
    assert summary["cluster"]["task"] == {"type": "worker", "index": 0}
    assert set(summary["worker_devices"]) == {"worker 0", "worker 1"}
    # the bottleneck's all-reduce is timed across the workers too (MWMS's collectives)
    assert summary["bottleneck"]["allreduce_seconds"] > 0
    assert (tmp_path / "model.keras").is_file()
    assert len(list((tmp_path / "logs").rglob("events.out.tfevents.*"))) == 1  # one writer's file
    # the checkpoints are the chief's alone: one file per save, no temporary leftovers
    assert sorted(p.name for p in (run / "ckpt").glob("*.npz")) == [
        f"ckpt-{STEPS:08d}.npz",
        f"ckpt-{FINAL:08d}.npz",
    ]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or p.name.startswith("tmp")]


@pytest.mark.slow
def test_a_killed_worker_stops_the_survivor_and_a_rerun_resumes_to_the_same_weights(tmp_path, reference):
    """Worker 1 is SIGKILLed one step into the second epoch: worker 0 exits 1 within the collective
    timeout with one line naming worker 1; both started again, they resume from the chief's
    checkpoint of the first epoch and end with the uninterrupted run's weights.

    Not killed at the epoch's last step: worker 1 can leave the step's last all-reduce before the
    chief has read its share, and the chief then fails before its checkpoint. One step later the
    checkpoint is certain: the chief writes it before it enters the step worker 1 needs it for."""
    args = train_args(tmp_path, "--steps-per-execution", "1")
    chief, doomed = start_workers(args, faults=("", f"kill_after_step={STEPS + 1}"))
    started = time.monotonic()
    assert finish(doomed)[0] == -signal.SIGKILL
    code, _out, err = finish(chief, timeout=90)
    assert code == 1, err[-3000:]
    assert time.monotonic() - started < 90
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert (
        len(lines) == 1
        and "lost worker 1 (127.0.0.1:" in lines[0]
        and "Run every worker's command again" in lines[0]
    )
    assert "Traceback" not in err
    assert (tmp_path / "ckpt" / f"ckpt-{STEPS:08d}.npz").exists()

    procs = start_workers(args)
    for proc in procs:
        code, _out, err = finish(proc)
        assert code == 0, err[-3000:]
        assert f"ckpt-{STEPS:08d}" in err  # each worker says where it resumed from
    assert relative_difference(weights(tmp_path), weights(reference)) < 1e-4


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_after_the_same_step_with_the_chiefs_checkpoint(tmp_path):
    args = train_args(tmp_path, "--steps-per-execution", "1")
    procs = start_workers(args, faults=("sleep_per_step=0.3", "sleep_per_step=0.3"))
    deadline = time.monotonic() + 180
    while not (tmp_path / "ckpt" / f"ckpt-{STEPS:08d}.npz").exists():  # the first epoch is done
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # the non-chief: the chief must still save
    results = [finish(p) for p in procs]
    assert [code for code, _out, _err in results] == [143, 143], [err[-2000:] for _c, _o, err in results]
    steps = set()
    for _code, _out, err in results:
        stopped = [
            line for line in err.splitlines() if line.startswith("stopped by SIGTERM after global step")
        ]
        assert len(stopped) == 1, err[-2000:]
        steps.add(int(stopped[0].split("global step ")[1].split(";")[0].split()[0]))
    (step,) = steps  # the same step on both
    assert STEPS < step < FINAL
    assert (tmp_path / "ckpt" / f"ckpt-{step:08d}.npz").exists()


def test_the_launcher_prefixes_and_exits_with_the_worst_workers_code(tmp_path):
    """Workers that fail on their own input (before TensorFlow: the launcher does not load data)."""
    proc = start([*train_args(tmp_path), "--local-workers", "2", "--data", str(tmp_path / "missing.npz")])
    code, _out, err = finish(proc, timeout=60)
    assert code == 2, err[-3000:]
    assert "[launcher] exit codes: worker 0 2, worker 1 2" in err
    assert err.count("missing.npz") >= 2 and "[worker 0] error: " in err and "[worker 1] error: " in err


@pytest.mark.slow
def test_sigterm_to_the_launcher_reaches_every_worker(tmp_path):
    """Ctrl-C or a scheduler's SIGTERM goes to the launcher: it forwards it, every worker stops
    after a whole step with the chief's checkpoint, and the launcher exits 143 too."""
    proc = start([*train_args(tmp_path), "--local-workers", "2"], GPUDIAG_FAULT="sleep_per_step=0.3")
    deadline = time.monotonic() + 180
    while not (tmp_path / "ckpt" / f"ckpt-{STEPS:08d}.npz").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, _out, err = finish(proc)
    assert code == 143, err[-3000:]
    steps = re.findall(r"\[worker \d\] stopped by SIGTERM after global step (\d+)", err)
    assert len(steps) == 2 and steps[0] == steps[1], err[-3000:]  # both after the same step
    assert (tmp_path / "ckpt" / f"ckpt-{int(steps[0]):08d}.npz").exists()
    assert "[launcher] exit codes: worker 0 143, worker 1 143" in err


def test_launcher_strips_its_own_flag_and_maps_signals():
    from training.devices.launcher import exit_code, worker_argv

    assert worker_argv(["--epochs", "2", "--local-workers", "3", "-q"]) == ["--epochs", "2", "-q"]
    assert worker_argv(["--local-workers=3", "--seed", "1"]) == ["--seed", "1"]
    assert exit_code(-9) == 137 and exit_code(-15) == 143 and exit_code(2) == 2


# -- bad input: one line, exit 2, before TensorFlow ------------------------------------------------

GOOD = json.dumps(
    {"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]}, "task": {"type": "worker", "index": 0}}
)


@pytest.mark.parametrize(
    ("tf_config", "args", "message"),
    [
        ("{not json", [], "TF_CONFIG"),
        (GOOD.replace('"index": 0', '"index": 5'), [], "index 5"),
        (GOOD.replace('"type": "worker", "index"', '"type": "ps", "index"'), [], "ps"),
        (None, ["--cluster", "slurm"], "Slurm"),
        (None, ["--cluster", "tf-config"], "TF_CONFIG"),
        (GOOD, ["--cpu-replicas", "2"], "one CPU replica per worker"),
        (None, ["--collective-timeout", "0"], "--collective-timeout must be a positive number"),
        (None, ["--collective-timeout", "-1"], "--collective-timeout must be a positive number"),
        (None, ["--local-workers", "0"], "--local-workers must be a number of workers >= 1"),
        (GOOD, ["--local-workers", "2"], "TF_CONFIG is set"),
        (None, ["--local-workers", "2", "--cpu-replicas", "2"], "drop --cpu-replicas"),
        (
            None,
            ["--local-workers", "3", "--global-batch-size", "64"],
            "does not split evenly over 3 replicas",
        ),
    ],
)
def test_bad_cluster_input_is_one_line_and_exit_2(capsys, monkeypatch, tf_config, args, message):
    for name in ("TF_CONFIG", "SLURM_STEP_ID", "SLURM_JOB_ID", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    code = main([*args, "--dry-run"])
    _out, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err


def test_two_slurm_tasks_on_a_node_take_half_of_its_gpus_each(capsys, monkeypatch, fixture_path):
    """srun with 2 tasks on one 4-GPU node: task 1 (SLURM_LOCALID 1) plans GPUs 2 and 3, at the
    address SlurmClusterResolver gives it (port 8888 + local task), 4 replicas in all."""
    for name in ("TF_CONFIG", "SLURM_GPUS_PER_TASK", "SLURM_GPU_BIND", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    slurm = {
        "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
        "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "node01",
        "SLURM_STEP_TASKS_PER_NODE": "2", "SLURMD_NODENAME": "node01", "SLURM_NODENAME": "node01",
    }  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    inventory = str(fixture_path("example-server-4xa100.json"))
    code = main(["--dry-run", "--inventory", inventory, "--skip-preflight"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "[worker 1] node01:8889 of 2 workers (slurm): 2 replica(s) here, 4 in all" in out
    assert "NVML GPU 2 " in out and "NVML GPU 3 " in out
    assert "NVML GPU 0 " not in out and "NVML GPU 1 " not in out

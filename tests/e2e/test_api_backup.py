"""A user's `model.fit` across two workers on localhost through the Python API: it trains on
MultiWorkerMirroredStrategy (which Keras 3's `fit` cannot use as TensorFlow builds it:
training/api/keras_fit.py), and `training.BackupAndRestore` backs it up from the chief alone; a
worker killed mid-run, then every worker's command run again, resumes from the chief's backup
(tests/helpers/fit_backup.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import HELPERS, child_env, finish, start_child

from training.devices.launcher import free_ports

pytestmark = pytest.mark.slow


def start_workers(backup: Path, kill_worker_at: dict[int, int]) -> list[subprocess.Popen[str]]:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        extra = {"KILL_AT_EPOCH": str(kill_worker_at[index])} if index in kill_worker_at else {}
        env = child_env(TF_CONFIG=tf_config, BACKUP=str(backup), **extra)
        procs.append(start_child(str(HELPERS / "fit_backup.py"), env=env))
    return procs


def test_a_killed_workers_fit_resumes_from_the_chiefs_backup(tmp_path):
    backup = tmp_path / "backup"
    chief, worker = (finish(p) for p in start_workers(backup, {1: 2}))
    assert worker[0] == 70, worker[2][-2000:]  # ended itself at the start of epoch 2
    assert chief[0] != 0  # its next collective lost the peer
    # the chief backed up epochs 0 and 1: the next run starts at epoch 2
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2

    results = [finish(p) for p in start_workers(backup, {})]
    for code, _out, err in results:
        assert code == 0, err[-3000:]
    (chief_run, worker_run) = (json.loads(out.strip().splitlines()[-1]) for _, out, _ in results)
    assert chief_run["epochs"] == worker_run["epochs"] == [2, 3]  # resumed, not restarted
    assert chief_run["chief"] and chief_run["saves"] == 2 and worker_run["saves"] == 0
    assert chief_run["loss"] == pytest.approx(worker_run["loss"], rel=1e-5)  # one model, in sync
    assert not backup.exists()  # the chief deleted the backup once the run was complete

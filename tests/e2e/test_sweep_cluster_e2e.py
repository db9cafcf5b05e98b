"""The sweep across workers, end to end on localhost (CPU workers, one device each under
MultiWorkerMirroredStrategy): two `pytest bench` processes given TF_CONFIG as two nodes would be run
the same cases in step and only the chief writes; `--local-workers 2` starts both workers itself,
and a worker lost mid-sweep ends it with one line, the cases measured before it kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.devices.launcher import free_ports
from training.loop.faults import WORKER_FAULT_ENV

ROOT = Path(__file__).resolve().parents[2]
SHARDS = str(
    ROOT / "tests" / "fixtures" / "tfrecord" / "train-*"
)  # 2 shards written as TF's ImageNet scripts do
SMALL = ["--model", "mlp", "--steps", "3", "--rounds", "2", "--warmup-steps", "1", "--allreduce-bytes", "4K"]


def sweep_command(report_dir: Path, *args: str) -> list[str]:
    pytest = [
        sys.executable,
        "-m",
        "pytest",
        "bench/test_sweep.py",
        "--benchmark-only",
        "-p",
        "no:cacheprovider",
    ]
    return [*pytest, "-q", "--report-dir", str(report_dir), *SMALL, *args]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **extra}


@pytest.mark.slow
def test_two_nodes_sweep_in_step_and_only_the_chief_writes(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        # the data streamed from TFRecord shards, each worker reading its own (data larger than memory)
        report = tmp_path / f"report-{index}"
        command = sweep_command(report, "--cluster", "tf-config", "--batch-sizes", "8", "--data", SHARDS)
        env = environment(TF_CONFIG=tf_config)
        procs.append(
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:] + err[-2000:]
    chief, other = outputs[0][0], outputs[1][0]
    assert "case 1/4: train 2 workers x 1 CPU device x 8: " in chief
    assert "case 4/4: all-reduce 2 workers x 1 CPU device 4 KiB: " in other  # the same cases, in step
    assert "worker 1: the chief writes the results and the scaling report" in other
    assert not (tmp_path / "report-1").exists()
    results = json.loads((tmp_path / "report-0" / "results.json").read_text())
    assert results["complete"] is True
    (train,) = results["train"]
    # the cluster's global batch: 8 on each worker's one device
    assert (train["workers"], train["gpus"], train["global_batch"]) == (2, 1, 16)
    assert [(r["workers"], r["gpus"]) for r in results["input"] + results["allreduce"]] == [(2, 1), (2, 1)]
    assert results["data"] == SHARDS and train["examples"] > 0
    text = (tmp_path / "report-0" / "scaling.md").read_text()
    assert "2 workers" in text.splitlines()[0]  # the title says what ran


@pytest.mark.slow
def test_a_lost_local_worker_ends_the_sweep_and_keeps_what_was_measured(tmp_path):
    out = tmp_path / "report"
    started = time.monotonic()
    proc = subprocess.run(
        sweep_command(out, "--local-workers", "2", "--batch-sizes", "8", "16", "--collective-timeout", "30"),
        cwd=ROOT, env=environment(**{WORKER_FAULT_ENV: "crash:16#1"}), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    ended = [line for line in proc.stdout.splitlines() if "the sweep across workers ends here" in line]
    assert ended and "worker 1" in ended[0] and "1 case(s) measured before it are kept" in ended[0], ended
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    assert [(r["workers"], r["batch_per_gpu"]) for r in results["train"]] == [(2, 8)]
    (failure,) = results["failures"]
    assert failure["workers"] == 2 and failure["error"] == "crash" and failure["batch_per_gpu"] == 16
    assert not results["input"] and not results["allreduce"]  # nothing ran after the loss
    # seen when the worker died, not after the survivor's collective timed out
    assert elapsed < 120, elapsed

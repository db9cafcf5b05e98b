"""training.children.worker and its protocol: typed messages, FLOPs, and workers that fail on
purpose (OOM, crash, hang)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from training.children.protocol import (
    AllreduceWork,
    Failed,
    InputWork,
    Prepared,
    Ran,
    Request,
    TrainWork,
    decode_answer,
    decode_request,
    encode,
)
from training.children.worker_client import WorkerError
from training.children.worker_group import Launch, WorkerGroup
from training.loop.faults import CRASH_EXIT_CODE
from training.loop.faults import WORKER_FAULT_ENV as FAULT_ENV
from training.loop.faults import WorkerFault as Fault
from training.loop.faults import parse_worker_faults as parse_faults
from training.loop.faults import worker_fault_for as fault_for


def test_parse_faults():
    assert parse_faults("oom:16, crash:32@2,hang:8") == [
        Fault("oom", 16),
        Fault("crash", 32, 2),
        Fault("hang", 8),
    ]
    assert parse_faults(None) == [] and parse_faults("") == []
    with pytest.raises(ValueError, match="oom:x"):
        parse_faults("oom:x")
    with pytest.raises(ValueError, match="boom:1"):
        parse_faults("boom:1")
    # "#T": task T of a cluster alone
    assert parse_faults("crash:32#1,oom:8", task_index=1) == [Fault("crash", 32), Fault("oom", 8)]
    assert parse_faults("crash:32#1,oom:8", task_index=0) == [Fault("oom", 8)]
    with pytest.raises(ValueError, match="crash:32#x"):
        parse_faults("crash:32#x")


def test_fault_matches_batch_and_replicas():
    faults = parse_faults("oom:16@2,crash:8")
    assert fault_for(faults, 16, 2) == Fault("oom", 16, 2)
    assert fault_for(faults, 16, 1) is None
    assert fault_for(faults, 8, 4) == Fault("crash", 8)


def test_requests_travel_as_flat_json_and_come_back_typed():
    work = TrainWork(model="mlp", batch_per_replica=8, jit_compile=True, image_size=16)
    wire = encode(Request("run", work, 5))
    assert wire["cmd"] == "run" and wire["kind"] == "train" and wire["steps"] == 5
    assert wire["batch_per_replica"] == 8 and wire["jit_compile"] is True
    assert decode_request(wire) == Request("run", work, 5)
    allreduce = Request("prepare", AllreduceWork(bytes=4096), 8)
    assert decode_request(encode(allreduce)) == allreduce
    assert decode_request({"cmd": "quit"}) == Request("quit")
    for bad in ({"cmd": "run", "kind": "bake"}, {"cmd": "run", "kind": "input", "steps": 2}, {"cmd": "x"}):
        with pytest.raises(ValueError):
            decode_request(bad)


def test_answers_carry_what_their_kind_measured():
    prepare = Request("prepare", InputWork(batch_per_replica=4))
    assert encode(Prepared(seconds=0.5, global_batch=8)) == {"seconds": 0.5, "global_batch": 8, "ok": True}
    assert decode_answer(prepare, {"ok": True, "seconds": 0.5, "global_batch": 8}) == Prepared(0.5, 8)
    run = Request("run", InputWork(batch_per_replica=4), 3)
    assert decode_answer(run, {"ok": True, "seconds": 0.1, "steps": 3}) == Ran(seconds=0.1, steps=3)
    assert decode_answer(run, {"ok": False, "error": "oom", "message": "OOM"}) == Failed("oom", "OOM")


def test_the_trainer_cache_key_ignores_the_steps_per_call():
    auto = TrainWork(model="mlp", batch_per_replica=8)
    assert TrainWork(model="mlp", batch_per_replica=8, steps_per_execution=20).trainer_key == auto.trainer_key


def test_flops_of_the_cnn_by_hand():
    """32x32x3 input: conv 3x3x3->32 at 32x32, conv 3x3x32->64 at 16x16, dense 4096->128, 128->10."""
    keras = pytest.importorskip("keras")
    from training.inputs import models
    from training.inputs.models import model_flops_per_sample

    macs = 32 * 32 * 32 * 27 + 16 * 16 * 64 * 288 + 4096 * 128 + 128 * 10
    model = models.build("cnn", (32, 32, 3), 10)
    assert isinstance(model, keras.Model)
    assert model_flops_per_sample(model) == 6 * macs


def _client(tmp_path: Path, *args: str, fault: str = "") -> WorkerGroup:
    """One worker, as the sweep starts it on one machine."""
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", FAULT_ENV: fault}
    return WorkerGroup([Launch(list(args), env)], tmp_path, "worker", start_timeout=180)


@pytest.mark.slow
def test_worker_answers_survives_oom_and_is_killed_when_it_hangs(tmp_path):
    """One worker: protocol answers, an injected OOM is an error answer (the worker lives on), a hang
    is killed after the timeout and reported, never waited on forever."""
    client = _client(tmp_path, "--cpu-replicas", "1", fault="oom:8,hang:16")
    ready = client.start()
    try:
        assert ready.event == "ready" and ready.replicas == 1 and ready.device_kind == "cpu"
        train = TrainWork(model="mlp", batch_per_replica=4)
        prepared = client.prepare(train, timeout=120)
        assert prepared.global_batch == 4 and (prepared.flops_per_sample or 0) > 0
        ran = client.run(train, 3, timeout=60)
        assert ran.steps == 3 and ran.seconds > 0 and (ran.loss or 0) > 0
        # a variant and another image size: a Trainer of their own, the float32 policy kept
        other = TrainWork(model="mlp", batch_per_replica=4, jit_compile=True, image_size=16)
        prepared = client.prepare(other, timeout=120)
        assert prepared.input_shape == [16, 16, 3] and prepared.dtype_policy == "float32"
        assert (client.run(other, 2, timeout=60).loss or 0) > 0
        with pytest.raises(WorkerError) as oom:
            client.prepare(TrainWork(model="mlp", batch_per_replica=8), 60)
        assert oom.value.kind == "oom" and "OOM" in str(oom.value)
        fed = client.run(InputWork(batch_per_replica=8), 2, 60)
        assert fed.steps == 2  # still answering after the OOM
        started = time.monotonic()
        with pytest.raises(WorkerError) as hung:
            client.prepare(TrainWork(model="mlp", batch_per_replica=16), 3)
        assert hung.value.kind == "timeout" and time.monotonic() - started < 20
        assert client.proc is not None and client.proc.poll() is not None  # killed
    finally:
        client.close()


@pytest.mark.slow
def test_worker_crash_is_reported_with_its_exit_code(tmp_path):
    client = _client(tmp_path, "--cpu-replicas", "2", fault="crash:4@2")
    client.start()
    try:
        ar = client.run(AllreduceWork(bytes=4096), 2, timeout=120)
        assert ar.steps == 2
        with pytest.raises(WorkerError) as crashed:
            client.prepare(TrainWork(model="mlp", batch_per_replica=4), 120)
        assert crashed.value.kind == "crash" and f"code {CRASH_EXIT_CODE}" in str(crashed.value)
    finally:
        client.close()


def test_worker_that_cannot_set_up_reports_why(tmp_path):
    client = _client(tmp_path, "--cpu-replicas", "0")
    with pytest.raises(WorkerError) as failed:
        client.start()
    assert failed.value.kind == "start" and "--cpu-replicas must be >= 1" in str(failed.value)

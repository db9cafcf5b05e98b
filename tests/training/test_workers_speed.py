"""The slowest worker's judgement and line (training.app.workers_speed, without TensorFlow), the
slow_compute fault, and the summary's printed line."""

from __future__ import annotations

import time

import pytest

from training.app.workers_speed import SLOW_RATIO, describe, judge
from training.loop.faults import FaultSpecError, from_env, parse


def facts(**seconds: float | None) -> dict[str, dict[str, object]]:
    return {
        name.replace("_", " "): {"address": f"10.0.0.{i}:2222", "compute_seconds": s}
        for i, (name, s) in enumerate(seconds.items())
    }


def test_the_slowest_is_named_with_its_ratio_to_the_fastest():
    found = judge(facts(worker_0=0.010, worker_1=0.023, worker_2=0.011))
    assert found is not None
    assert (found["slowest"], found["fastest"], found["ratio"]) == ("worker 1", "worker 0", 2.3)
    line = describe(found)
    assert line is not None
    assert line.startswith(
        "worker 1 (10.0.0.1:2222) computes its steps 2.3x slower than worker 0 (23 ms against 10 ms"
    )
    assert "the others wait for it every step" in line


def test_close_workers_print_nothing_but_keep_their_figures():
    found = judge(facts(worker_0=0.010, worker_1=0.010 * (SLOW_RATIO - 0.05)))
    assert found is not None and found["ratio"] < SLOW_RATIO
    assert describe(found) is None


@pytest.mark.parametrize(
    "per_worker",
    [facts(worker_0=0.01), facts(worker_0=0.01, worker_1=None), {}],
)
def test_fewer_than_two_timed_workers_are_no_comparison(per_worker):
    assert judge(per_worker) is None
    assert describe(None) is None


def test_slow_compute_waits_f_minus_1_times_the_compute():
    faults = parse("slow_compute=3")
    assert faults.slow_compute == 3.0
    started = time.perf_counter()
    faults.after_compute(0.05)
    assert 0.09 <= time.perf_counter() - started < 0.5
    assert from_env({"GPUDIAG_FAULT": "slow_compute=2"}) is not None
    with pytest.raises(FaultSpecError):
        parse("slow_compute=fast")


def test_the_summary_prints_the_slowest_worker_line(capsys):
    from dataclasses import fields

    from training.app.render import print_summary
    from training.app.summary import RunSummary

    values = {f.name: None for f in fields(RunSummary)}
    values.update(
        model="mlp", data="synthetic", device_kind="cpu", replicas=2, devices=["CPU:0"], warmup_steps=0,
        validation_data=None, workers_speed=judge(facts(worker_0=0.01, worker_1=0.04)),
    )  # fmt: skip
    print_summary(RunSummary(**values))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "slowest worker: worker 1 (10.0.0.1:2222) computes its steps 4.0x slower than worker 0" in out

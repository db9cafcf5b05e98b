"""The --deep checks. Two TensorFlow child processes in all (each costs a TensorFlow start): one
healthy run over 2 CPU logical devices through `gpudiag check --deep`, one with a corrupted replica.
The timeout path uses a fake child that hangs, so it costs no TensorFlow start."""

from __future__ import annotations

import json
import sys

import pytest
from diag_support import OFFICIAL_STACK

from diagnostics import cli, probe
from diagnostics.checks import Context
from diagnostics.checks import deep as deep_checks
from diagnostics.selection import SelectionOptions


@pytest.mark.slow
def test_check_deep_on_cpu_logical_devices(capsys):
    """No driver here: the probe runs the trainer's setup over 2 logical CPUs and every deep check passes."""
    code = cli.main(["check", "--deep", "--json", "--deep-timeout", "240"])
    data = json.loads(capsys.readouterr().out)
    deep = {f["check"]: f for f in data["findings"] if f["check"] in probe.DEEP_CHECKS}
    assert set(deep) == set(probe.DEEP_CHECKS)
    assert all(f["status"] == "pass" for f in deep.values()), deep
    assert "2 replica(s)" in deep["strategy"]["message"] and "mirrored" in deep["strategy"]["message"]
    assert code == 1  # the driver check still fails on this GPU-less machine


@pytest.mark.slow
def test_replica_consistency_catches_a_corrupted_replica():
    result = probe.run_probe(
        probe.probe_command(cpu_replicas=2),
        240,
        {**__import__("os").environ, probe.INJECT_ENV: "corrupt"},
    )
    assert result.findings["replica-consistency"][0]["status"] == "fail", result
    assert result.findings["strategy"][0]["status"] == "pass"


def hanging_child(stage: str) -> list[str]:
    line = json.dumps({"event": "start", "check": stage, "detail": "/gpu:0 = NVML GPU 1 RTX 5090"})
    return [sys.executable, "-c", f"import time; print({line!r}, flush=True); time.sleep(60)"]


def test_hung_gpu_smoke_is_reported_not_waited_on(monkeypatch):
    """A PTX JIT that hangs: the child is killed at the timeout and gpu-smoke fails saying so."""
    monkeypatch.setattr(probe, "probe_command", lambda *a: hanging_child("gpu-smoke"))
    ctx = Context(stack=OFFICIAL_STACK, args=SelectionOptions(), deep_timeout_s=1.5)
    smoke = deep_checks.gpu_smoke(ctx)
    assert [f.status for f in smoke] == ["fail"]
    assert "PTX JIT" in smoke[0].message and "RTX 5090" in smoke[0].message and "1.5 s" in smoke[0].message
    assert [f.status for f in deep_checks.replica_consistency(ctx)] == ["skip"]
    assert ctx.cache["probe"].seconds < 10


def test_crashing_child_is_a_failure_with_its_last_words(monkeypatch):
    monkeypatch.setattr(
        probe,
        "probe_command",
        lambda *a: [sys.executable, "-c", "import sys; sys.exit('ImportError: no tensorflow')"],
    )
    ctx = Context(stack=OFFICIAL_STACK, args=SelectionOptions(), deep_timeout_s=30)
    f = deep_checks.strategy(ctx)[0]
    assert f.status == "fail" and "no tensorflow" in f.message


def test_deep_checks_skip_on_a_recorded_inventory():
    ctx = Context(stack=OFFICIAL_STACK, inventory_path="x.json")
    assert [f.status for f in deep_checks.strategy(ctx)] == ["skip"]

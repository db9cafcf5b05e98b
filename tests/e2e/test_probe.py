"""The --deep checks. Two TensorFlow child processes in all (each costs a TensorFlow start): one
healthy run over 2 CPU logical devices through `gpudiag check --deep`, one with a corrupted replica.
The timeout path uses a fake child that hangs, so it costs no TensorFlow start."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

import pytest
from diag_support import FIXTURES, OFFICIAL_STACK
from support import run_module

from diagnostics import cli, probe
from diagnostics.checks import Context, make_context
from diagnostics.checks import deep as deep_checks
from diagnostics.selection import SelectionOptions


@pytest.mark.slow
def test_check_deep_on_cpu_logical_devices(capsys, no_driver):
    """No driver: the probe runs the trainer's setup over 2 logical CPUs and every deep check passes."""
    code = cli.main(["check", "--deep", "--json", "--deep-timeout", "240"])
    data = json.loads(capsys.readouterr().out)
    deep = {f["check"]: f for f in data["findings"] if f["check"] in probe.DEEP_CHECKS}
    assert set(deep) == set(probe.DEEP_CHECKS)
    assert all(f["status"] == "pass" for f in deep.values()), deep
    assert "2 replica(s)" in deep["strategy"]["message"] and "mirrored" in deep["strategy"]["message"]
    assert code == 1  # the driver check still fails on a machine without a driver


def _probe_with(inject: str) -> probe.ProbeResult:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", probe.INJECT_ENV: inject}
    return probe.run_probe(probe.probe_command(cpu_replicas=2), 240, env)


def _status(result: probe.ProbeResult, check: str) -> str:
    return str(result.findings[check][0]["status"])


@pytest.mark.slow
def test_each_deep_check_fails_on_a_fault_just_over_its_tolerance():
    """One child, three faults: an uneven batch split (strategy), one device's matrix product off
    by 2x the tolerance (gpu-smoke), and replica 0's gradients shifted so that the weights after
    the real all-reduce differ by 2x the tolerance (replica-consistency)."""
    over = 2 * probe.RELATIVE_TOLERANCE
    result = _probe_with(f"strategy,gpu-smoke:{over},replica-consistency:{over}")
    assert _status(result, "strategy") == "fail", result
    assert "was split into [5, 4], not 2 x 4" in result.findings["strategy"][0]["message"]
    assert _status(result, "gpu-smoke") == "fail" and "/cpu:0" in result.findings["gpu-smoke"][0]["message"]
    consistency = result.findings["replica-consistency"][0]
    assert consistency["status"] == "fail"
    assert relative_difference(consistency) == pytest.approx(over, rel=0.1)


@pytest.mark.slow
def test_deep_checks_pass_a_fault_just_under_their_tolerance():
    """Half the tolerance (about 50x float32 noise) is still a pass: the threshold is where it says."""
    under = probe.RELATIVE_TOLERANCE / 2
    result = _probe_with(f"gpu-smoke:{under},replica-consistency:{under}")
    assert {c: _status(result, c) for c in probe.DEEP_CHECKS} == dict.fromkeys(probe.DEEP_CHECKS, "pass")
    assert relative_difference(result.findings["replica-consistency"][0]) == pytest.approx(under, rel=0.1)


def relative_difference(finding: dict) -> float:
    """The figure a replica-consistency message reports (the injected shift plus float32 noise)."""
    match = re.search(r"relative difference ([0-9.e+-]+)", finding["message"])
    assert match, finding
    return float(match.group(1))


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


@pytest.mark.slow
def test_a_hung_allreduce_fails_in_one_line_with_its_cause_and_log_tail(no_driver):
    """GPUDIAG_FAULT=allreduce-hang makes one CPU replica never join the all-reduce: `gpudiag check
    --deep --cpu-replicas 2 --deep-timeout 20` exits 1 well within a minute, with one FAIL naming the
    cause, the child's last log lines in --json, and no traceback."""
    env = {**os.environ, "GPUDIAG_FAULT": "allreduce-hang"}
    args = ["check", "--deep", "--cpu-replicas", "2", "--deep-timeout", "20", "--json"]
    start = time.monotonic()
    proc = run_module("diagnostics", *args, timeout=90, env=env)
    seconds = time.monotonic() - start
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    hung = [f for f in data["findings"] if f["check"] == "replica-consistency"]
    assert [f["status"] for f in hung] == ["fail"], hung
    message = hung[0]["message"]
    assert "no answer within 20 s while running an all-reduce of 1024 float32 over 2 replica(s)" in message
    assert "likely cause: GPUDIAG_FAULT=allreduce-hang" in message and "\n" not in message
    assert any("never joins the all-reduce" in line for line in hung[0]["log_tail"]), hung[0]
    assert [f["status"] for f in data["findings"] if f["check"] in ("strategy", "gpu-smoke")] == ["pass"] * 2
    assert seconds < 50


def test_a_hung_allreduce_on_geforce_cards_names_p2p_and_keeps_the_nccl_log(monkeypatch):
    """Two RTX 5090s without NVLink, NCCL_P2P_DISABLE unset: the likely cause is their broken P2P, and
    the NCCL lines the child wrote before it hung come back in log_tail. A fake child, no TensorFlow."""
    start = json.dumps({"event": "start", "check": "replica-consistency", "stage": "allreduce",
                        "detail": "an all-reduce of 1024 float32 over 2 replica(s)"})  # fmt: skip
    nccl = "host:1:2 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM"
    script = (
        f"import sys, time; print({start!r}, flush=True); print({nccl!r}, file=sys.stderr); time.sleep(60)"
    )
    monkeypatch.setattr(probe, "probe_command", lambda *a: [sys.executable, "-c", script])
    ctx = make_context(SelectionOptions("multi"), str(FIXTURES / "inv-workstation-2x5090-display.json"))
    ctx = dataclasses.replace(ctx, inventory_path=None, deep_timeout_s=3, env={})
    [finding] = deep_checks.replica_consistency(ctx)
    assert finding.status == "fail" and "likely cause: P2P over PCIe between GeForce cards" in finding.message
    assert "NCCL_P2P_DISABLE is unset" in finding.message and "NCCL_P2P_DISABLE=1" in finding.remedy
    assert finding.log_tail == (nccl,) and finding.to_dict()["log_tail"] == [nccl]


def test_system_facts_name_their_own_causes():
    from diagnostics.system import AcsBridge, SystemFacts

    bridge = AcsBridge("0000:00:03.5", (0, 1), "SrcValid+ TransBlk- ReqRedir+ CmpltRedir+")
    facts = SystemFacts(shm_bytes=64 * 2**20, in_container=True, iommu="on", acs_bridges=(bridge,))
    causes = deep_checks._system_causes(facts)
    assert len(causes) == 3 and "0000:00:03.5" in causes[0] and "IOMMU" in causes[1]
    assert "/dev/shm in this container is 64 MiB" in causes[2]
    assert deep_checks._system_causes(None) == []

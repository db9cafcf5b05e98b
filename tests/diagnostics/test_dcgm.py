"""DCGM's diagnostic folded into findings: the parser on a real `dcgmi diag -r 1 -j` output (from
NVIDIA/DCGM's own test "JsonResult: Deserialize real output", nvvs/src/tests/JsonResultTests.cpp,
DCGM 3.3.7 commit 3fb35246cb8f8b29fca6ebb34be6c0b379645ce2: 8 GPUs, DCGM 3.1.0; see
tests/fixtures/dcgm/README.md), and the runner with a fake `dcgmi` on PATH."""

from __future__ import annotations

import json
import os
import shutil
import stat

from diag_support import FIXTURES

from diagnostics import dcgm

REAL = FIXTURES / "dcgm" / "dcgmi-diag-r1-8gpu.txt"


def test_a_real_level_1_run_where_every_test_passed_is_one_pass():
    """The warning line before the JSON and the nulls between tests, as DCGM 3.1 wrote them, are skipped."""
    [finding] = dcgm.parse_diag(REAL.read_text())
    assert finding.check == "dcgm" and finding.status == "pass"
    assert finding.message.startswith("DCGM 3.1.0 diag -r 1: 10 test(s) passed (Deployment: Denylist, ")
    assert "Custom: software" in finding.message and finding.gpus == tuple(range(8))


def test_a_failing_test_is_its_own_failure_with_dcgms_words():
    data = json.loads(REAL.read_text()[REAL.read_text().find("{") :])
    deployment = data["DCGM GPU Diagnostic"]["test_categories"][0]["tests"]
    deployment[-1]["results"] = [
        {"gpu_ids": "3", "status": "FAIL", "warnings": [{"warning": "Inforom corrupt on GPU 3"}]}
    ]
    findings = dcgm.parse_diag(json.dumps(data))
    assert [f.status for f in findings] == ["pass", "fail"]
    assert findings[1].message == "DCGM Deployment: Inforom: fail (Inforom corrupt on GPU 3)"
    assert findings[1].gpus == (3,) and findings[1].remedy
    assert "9 test(s) passed" in findings[0].message


def test_unreadable_output_is_a_failure_not_a_crash():
    assert [f.status for f in dcgm.parse_diag("Error: unable to connect to host engine")] == ["fail"]


def test_the_runner_uses_a_dcgmi_on_path_and_none_elsewhere(tmp_path, monkeypatch):
    """A tiny `dcgmi` that prints the real output (and exits 226 as dcgmi does after a failed test,
    which must not matter): its findings come back; without dcgmi on PATH, no findings at all."""
    fake = tmp_path / "dcgmi"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\ncat {REAL}\nexit 226\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("dcgmi") == str(fake)
    findings = dcgm.run_diag(30, [0, 1])
    assert [f.status for f in findings] == ["pass"] and "10 test(s) passed" in findings[0].message
    assert (tmp_path / "args").read_text().split() == ["diag", "-r", "1", "-j", "-i", "0,1"]
    assert dcgm.run_diag(30, which=lambda name: None) == []


def test_dcgm_is_a_deep_check_of_its_own():
    """`gpudiag check --list-checks` names it, `--deep` runs it, the fast checks do not."""
    from diagnostics.checks import describe, registry

    deep = dict(registry(deep=True))
    assert "dcgm" in deep and "dcgm" not in dict(registry())
    assert describe(deep["dcgm"]).startswith("DCGM's own quick diagnostic (dcgmi diag -r 1)")

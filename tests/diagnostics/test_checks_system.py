"""The driver, software-stack, topology and health checks against recorded inventories and fixed stacks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from diag_support import FIXTURES, OFFICIAL_STACK, ctx_for, run_one, statuses, worst

from diagnostics.checks import SECTIONS, Finding, make_context, registry, run_checks, summarize
from diagnostics.checks import health as health_checks
from diagnostics.checks.health import HOT_C
from diagnostics.inventory import load_inventory
from diagnostics.selection import SelectionOptions
from diagnostics.stack import Stack, TfBuild

ALL = [
    "inv-workstation-2x5090-display.json",
    "inv-5090-old-driver.json",
    "inv-geforce-p2p-reported.json",
    "inv-mixed.json",
    "inv-dgx-8xh100.json",
    "inv-hot-throttling.json",
    "inv-nothing-selected.json",
    "inv-no-driver.json",
]


def test_driver_missing_fails_with_clear_message():
    findings = run_one("driver", ctx_for(None))
    assert statuses(findings) == ["fail"]
    assert "no NVIDIA driver found" in findings[0].message and "nvidia-smi" in findings[0].remedy


def test_driver_too_old_for_blackwell_fails_naming_cards():
    findings = run_one("driver", ctx_for("inv-5090-old-driver.json"))
    assert statuses(findings) == ["fail"]
    assert "RTX 5090" in findings[0].message and "570" in findings[0].remedy


def test_driver_ok_passes_with_versions():
    f = run_one("driver", ctx_for("inv-dgx-8xh100.json"))[0]
    assert f.status == "pass" and "570.124.06" in f.message and "12.8" in f.message


def test_tensorflow_missing_fails():
    stack = Stack(python="3.11")
    assert statuses(run_one("tensorflow", ctx_for("inv-dgx-8xh100.json", stack=stack))) == ["fail"]


def test_tensorflow_cpu_build_with_gpus_fails():
    stack = dataclasses.replace(
        OFFICIAL_STACK, tensorflow_distribution="tensorflow-cpu", tf_build=TfBuild(False)
    )
    f = run_one("tensorflow", ctx_for("inv-dgx-8xh100.json", stack=stack))[0]
    assert f.status == "fail" and "CPU-only" in f.message and "and-cuda" in f.remedy


def test_tensorflow_without_pip_cuda_libraries_warns():
    stack = dataclasses.replace(OFFICIAL_STACK, cuda_wheels={})
    assert statuses(run_one("tensorflow", ctx_for("inv-dgx-8xh100.json", stack=stack))) == ["warn"]


def test_tensorflow_official_stack_passes_with_versions():
    f = run_one("tensorflow", ctx_for("inv-dgx-8xh100.json"))[0]
    assert (
        f.status == "pass" and "2.21.0" in f.message and "Keras 3.15.1" in f.message and "12.5.1" in f.message
    )


def test_cuda_version_newer_driver_passes():
    assert statuses(run_one("cuda-version", ctx_for("inv-dgx-8xh100.json"))) == ["pass"]


def test_cuda_version_older_minor_warns_with_driver_to_install():
    f = run_one("cuda-version", ctx_for("inv-5090-old-driver.json"))[0]
    assert f.status == "warn" and "555.42.02" in f.remedy


def test_cuda_version_older_major_fails():
    stack = dataclasses.replace(OFFICIAL_STACK, tf_build=TfBuild(True, "13.0", "9", ("sm_90",)))
    assert statuses(run_one("cuda-version", ctx_for("inv-dgx-8xh100.json", stack=stack))) == ["fail"]


def test_nccl_2_25_1_on_rtx5090_fails():
    stack = dataclasses.replace(OFFICIAL_STACK, nccl="2.25.1")
    findings = run_one("nccl", ctx_for("inv-workstation-2x5090-display.json", stack=stack))
    assert statuses(findings) == ["fail"]
    assert findings[0].gpus == (1, 2) and "2.26.2" in findings[0].remedy


def test_nccl_2_25_1_on_ada_passes():
    stack = dataclasses.replace(OFFICIAL_STACK, nccl="2.25.1")
    assert statuses(run_one("nccl", ctx_for("inv-geforce-p2p-reported.json", stack=stack))) == ["pass"]


def test_p2p_missing_on_consumer_cards_warns_with_nccl_remedy():
    f = run_one("p2p", ctx_for("inv-workstation-2x5090-display.json"))[0]
    assert f.status == "warn" and "NCCL_P2P_DISABLE=1" in f.remedy and "--cross-device-ops" in f.remedy


def test_p2p_reported_on_geforce_still_warns():
    f = run_one("p2p", ctx_for("inv-geforce-p2p-reported.json"))[0]
    assert f.status == "warn" and "GeForce" in f.message


def test_p2p_nvlink_server_passes():
    f = run_one("p2p", ctx_for("inv-dgx-8xh100.json"))[0]
    assert f.status == "pass" and "28 pair(s) via 18 NVLink(s)" in f.message


def test_pcie_narrow_link_warns():
    findings = run_one("pcie", ctx_for("inv-hot-throttling.json"))
    assert statuses(findings) == ["warn"] and "x8" in findings[0].message and findings[0].gpus == (1,)


def test_pcie_full_links_pass():
    assert statuses(run_one("pcie", ctx_for("inv-dgx-8xh100.json"))) == ["pass"]


def test_health_hot_throttling_card_with_ecc_errors():
    findings = run_one("health", ctx_for("inv-hot-throttling.json"))
    assert sorted(statuses(findings)) == ["fail", "warn"]
    assert all(f.gpus == (1,) for f in findings)
    text = " ".join(f.message for f in findings)
    assert "ECC" in text and "91 °C" in text and "thermal" in text and "power cap" in text


def test_health_cool_server_passes():
    assert statuses(run_one("health", ctx_for("inv-dgx-8xh100.json"))) == ["pass"]


@pytest.mark.parametrize("fixture", ALL)
def test_every_check_runs_on_every_fixture(fixture):
    """Every check returns findings with a known status; warn and fail always carry a remedy."""
    findings = run_checks(ctx_for(fixture))
    assert {f.check for f in findings} == {cid for cid, _ in registry()}
    for f in findings:
        assert isinstance(f, Finding)
        if f.status in ("warn", "fail"):
            assert f.remedy, f
            assert "internal error" not in f.message


def test_no_driver_machine_only_driver_fails():
    findings = run_checks(ctx_for(None))
    assert [f.check for f in findings if f.status == "fail"] == ["driver"]
    assert summarize(findings)["fail"] == 1


def test_healthy_server_has_no_warnings():
    assert worst(run_checks(ctx_for("inv-dgx-8xh100.json"))) == "pass"


def test_a_crashing_check_becomes_a_failed_finding(monkeypatch):
    def broken(ctx):
        raise KeyError("boom")

    monkeypatch.setattr(health_checks, "health", broken)
    findings = run_checks(ctx_for("inv-dgx-8xh100.json"))
    assert [f.status for f in findings if f.check == "health"] == ["fail"]


def test_every_remedy_section_exists_in_troubleshooting():
    text = (Path(__file__).resolve().parents[2] / "TROUBLESHOOTING.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
        for h in re.findall(r"^## (.+)$", text, re.M)
    }
    assert set(SECTIONS) <= anchors


def test_check_docstrings_are_one_line_titles():
    for _, check in registry(deep=True):
        assert check.__doc__ and check.__doc__.strip().splitlines()[0].endswith(".")


def test_run_checks_stamps_ids_and_keeps_ids_a_check_sets_itself(monkeypatch):
    """Checks return findings without their id; run_checks fills it in, except where a check filed a
    finding under an id on purpose (the deep checks do), and the JSON form carries the id."""
    from diagnostics.checks import base

    def two(ctx):
        return [base.warn("hot", "cool it", gpus=[1]), Finding("gpu-smoke", "skip", "elsewhere")]

    assert base.warn("hot", "cool it").check == ""
    monkeypatch.setattr(health_checks, "health", two)
    findings = run_checks(ctx_for("inv-dgx-8xh100.json"), only=["health"])
    assert [(f.check, f.status, f.gpus) for f in findings] == [
        ("health", "warn", (1,)),
        ("gpu-smoke", "skip", ()),
    ]
    assert findings[0].to_dict() == {
        "check": "health",
        "status": "warn",
        "gpus": [1],
        "message": "hot",
        "remedy": "cool it",
    }


def test_finding_still_validates_its_status():
    with pytest.raises(ValueError):
        Finding("", "ok", "not a status")


@pytest.mark.parametrize(("celsius", "expected"), [(HOT_C - 0.5, ["pass"]), (HOT_C, ["warn"])])
def test_health_warns_from_exactly_hot_c(celsius, expected):
    """The one threshold, at its boundary: HOT_C warns, half a degree below does not."""
    dgx = load_inventory(FIXTURES / "inv-dgx-8xh100.json")
    inventory = dataclasses.replace(
        dgx,
        gpus=tuple(dataclasses.replace(g, temperature_c=celsius if g.index == 0 else 40.0) for g in dgx.gpus),
    )
    ctx = make_context(SelectionOptions(), env={}, stack=OFFICIAL_STACK, read_live=lambda: inventory)
    findings = run_one("health", ctx)
    assert statuses(findings) == expected
    if expected == ["warn"]:
        assert findings[0].gpus == (0,) and f"{HOT_C:g} °C" in findings[0].message

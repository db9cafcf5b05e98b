"""A snapshot is a whole bug report: software, GPU-related environment, OS, and the NVML error where
there is no driver; a replay is judged on the recorded software (an old snapshot falls back to this
machine's and says so); `gpudiag check --strict` fails on warnings too."""

from __future__ import annotations

import dataclasses
import json

from diag_support import FIXTURES, OFFICIAL_STACK

from diagnostics import cli, nvml
from diagnostics.checks import make_context, run_check
from diagnostics.inventory import Inventory, load_inventory
from diagnostics.nvml import NvmlUnavailable
from diagnostics.selection import SelectionOptions
from diagnostics.snapshot import gpu_environment, take_snapshot
from diagnostics.stack import TfBuild

NO_DRIVER = "no NVIDIA driver found: NVML library not loaded"


def no_driver(**_: object) -> Inventory:
    raise NvmlUnavailable(NO_DRIVER)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def recorded(fixture: str, tmp_path, **changes: object) -> str:
    """A version 2 copy of a fixture that records `changes` (software, environment, ...)."""
    inv = dataclasses.replace(load_inventory(FIXTURES / fixture), **changes)  # type: ignore[arg-type]
    path = tmp_path / f"v2-{fixture}"
    inv.write(path)
    return str(path)


def test_the_gpu_environment_is_recorded_and_nothing_private():
    env = {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "NCCL_P2P_DISABLE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_FLAGS": "--xla_gpu_autotune_level=0",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "HOME": "/root",
        "TF_API_TOKEN": "secret",
        "NCCL_IB_KEY": "x",
        "TF_VAR_db_password": "x",
        "TF_CLI_CONFIG_FILE": "/root/.terraformrc",
    }
    assert list(gpu_environment(env)) == [
        "CUDA_DEVICE_ORDER",
        "CUDA_VISIBLE_DEVICES",
        "NCCL_P2P_DISABLE",
        "NVIDIA_VISIBLE_DEVICES",
        "TF_CPP_MIN_LOG_LEVEL",
        "XLA_FLAGS",
    ]


def test_a_machine_without_a_driver_still_gets_a_whole_report():
    snap = take_snapshot(no_driver, stack=OFFICIAL_STACK, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/bin"})
    assert snap.gpus == () and snap.nvml_error == NO_DRIVER and snap.host
    assert snap.software is not None and snap.software.tensorflow == "2.21.0" and snap.software.os
    assert snap.environment == {"CUDA_VISIBLE_DEVICES": ""}
    assert Inventory.from_dict(json.loads(snap.to_json())) == snap


def test_gpudiag_snapshot_without_a_driver_writes_the_report_and_exits_1(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(nvml, "read_inventory", no_driver)
    target = tmp_path / "report.json"
    code, out, err = run(capsys, "snapshot", "-o", str(target))
    assert code == 1 and out == "" and err.count("\n") == 1 and NO_DRIVER in err and str(target) in err
    data = json.loads(target.read_text())
    assert data["schema"] == "gpudiag-inventory/3" and data["nvml_error"] == NO_DRIVER
    assert data["software"]["python"] and "system_libraries" in data["software"] and data["software"]["os"]
    code, out, _ = run(capsys, "check", "--inventory", str(target), "--json")
    driver = next(f for f in json.loads(out)["findings"] if f["check"] == "driver")
    assert code == 1 and driver["status"] == "fail" and NO_DRIVER in driver["message"]


def test_a_replay_judges_the_recorded_software_not_this_machines(tmp_path):
    cpu_only = dataclasses.replace(
        OFFICIAL_STACK, tensorflow_distribution="tensorflow-cpu", tf_build=TfBuild(False)
    )
    path = recorded("inv-dgx-8xh100.json", tmp_path, software=cpu_only)
    ctx = make_context(SelectionOptions(), path)
    assert ctx.stack_origin == "recorded" and ctx.stack == cpu_only
    finding = run_check(ctx, "tensorflow")[0]
    assert (
        finding.status == "fail" and "CPU-only build" in finding.message and "as recorded" in finding.message
    )


def test_an_old_snapshot_falls_back_to_this_machines_software_and_says_so(capsys):
    path = str(FIXTURES / "inv-dgx-8xh100.json")
    assert json.loads((FIXTURES / "inv-dgx-8xh100.json").read_text())["schema"] == "gpudiag-inventory/1"
    ctx = make_context(SelectionOptions(), path)
    assert ctx.stack_origin == "replaying"
    assert "the inventory records none" in run_check(ctx, "tensorflow")[0].message
    _code, out, _ = run(capsys, "check", "--inventory", path)
    assert "it records no software, so this machine's is judged instead" in out.splitlines()[0]


def test_the_recorded_environment_is_the_replays_environment(tmp_path):
    path = recorded("inv-mixed.json", tmp_path, environment={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    ctx = make_context(SelectionOptions(), path)
    assert ctx.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert not any("fastest first" in f.message for f in run_check(ctx, "device-order"))


def test_version_1_reads_and_version_3_is_written(tmp_path):
    inv = load_inventory(FIXTURES / "example-server-4xa100.json")
    path = tmp_path / "again.json"
    inv.write(path)
    assert json.loads(path.read_text())["schema"] == "gpudiag-inventory/3"
    assert load_inventory(path) == inv


def test_strict_fails_on_warnings_for_ci_gates(capsys, tmp_path):
    clean = recorded("inv-dgx-8xh100.json", tmp_path, software=OFFICIAL_STACK)
    assert run(capsys, "check", "--inventory", clean)[0] == 0
    assert run(capsys, "check", "--inventory", clean, "--strict", "--json")[0] == 0
    warned = recorded("inv-geforce-p2p-reported.json", tmp_path, software=OFFICIAL_STACK)
    code, out, _ = run(capsys, "check", "--inventory", warned, "--json")
    assert code == 0 and json.loads(out)["summary"]["warn"] >= 1 and json.loads(out)["summary"]["fail"] == 0
    code, out, _ = run(capsys, "check", "--inventory", warned, "--strict")
    assert code == 1 and "--strict: warnings count as failures" in out
    code, out, _ = run(capsys, "check", "--inventory", warned, "--strict", "--json")
    assert code == 1 and json.loads(out)["summary"]["warn"] >= 1

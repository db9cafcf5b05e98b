"""The gpudiag command: the no-driver path and bad input through the installed `gpudiag` script
(the one beside this interpreter: a missing script is a failure, not a skip), on a simulated
machine without a driver; everything else through main() in-process, to keep the suite fast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from diag_support import FIXTURES
from support import child_env, installed_script

from diagnostics import cli

GPUDIAG = installed_script("gpudiag")


def gpudiag(*args: str) -> subprocess.CompletedProcess[str]:
    assert GPUDIAG.exists(), f"{GPUDIAG} is missing: install the project (pip install -e .)"
    return subprocess.run([str(GPUDIAG), *args], capture_output=True, text=True, timeout=60, env=child_env())


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def test_no_driver_machine_check_fails_cleanly_without_importing_tensorflow():
    """On a machine without a driver: driver fails with NVML's message, exit 1, valid JSON, no TensorFlow."""
    proc = gpudiag("check", "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    driver = next(f for f in data["findings"] if f["check"] == "driver")
    assert driver["status"] == "fail" and "no NVIDIA driver found" in driver["message"]
    assert data["summary"]["fail"] == 1 and "Traceback" not in proc.stderr


def test_no_driver_snapshot_list_and_monitor_say_one_line():
    for args in (("snapshot",), ("list",), ("monitor", "--duration", "1")):
        proc = gpudiag(*args)
        assert proc.returncode == 1, args
        assert len(proc.stderr.strip().splitlines()) == 1 and "driver" in proc.stderr, args


@pytest.mark.parametrize(
    "args",
    [
        ("check", "--bogus"),
        ("frobnicate",),
        (),
        ("check", "--device-mode", "all"),
        ("check", "--min-gpu-memory", "-3"),
        ("check", "--custom-gpus", "x"),
        ("check", "--inventory", "/nonexistent/inv.json"),
        ("check", "--inventory", str(FIXTURES)),
        (
            "list",
            "--inventory",
            str(FIXTURES / "inv-mixed.json"),
            "--device-mode",
            "custom",
            "--custom-gpus",
            "9",
        ),
        ("list", "--inventory", str(FIXTURES / "inv-mixed.json"), "--custom-gpus", "1"),
        ("monitor", "--interval", "0"),
    ],
)
def test_bad_input_is_one_line_exit_2(args):
    proc = gpudiag(*args)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("gpudiag: error:")
    assert "Traceback" not in proc.stderr


def test_malformed_inventory_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    for text in ("{not json", '{"schema": "gpudiag-inventory/1"}', "[]"):
        bad.write_text(text)
        code, out, err = run(capsys, "check", "--inventory", str(bad))
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_check_json_shape_and_exit_codes(capsys):
    code, out, _ = run(capsys, "check", "--inventory", fixture("inv-dgx-8xh100.json"), "--json")
    data = json.loads(out)
    assert set(data) == {"findings", "summary"}
    assert set(data["summary"]) == {"pass", "warn", "fail", "skip"}
    for f in data["findings"]:
        assert set(f) == {"check", "status", "gpus", "message", "remedy"}
    assert code == (1 if data["summary"]["fail"] else 0)
    code, out, _ = run(capsys, "check", "--inventory", fixture("inv-hot-throttling.json"), "--json")
    assert code == 1 and json.loads(out)["summary"]["fail"] >= 1


def test_check_table_has_columns_and_summary(capsys):
    _, out, _ = run(capsys, "check", "--inventory", fixture("inv-workstation-2x5090-display.json"))
    header = out.splitlines()[2]
    for column in ("check", "status", "GPUs", "message", "remedy"):
        assert column in header
    assert "RTX 5090" in out and " findings: " in out.strip().splitlines()[-1]


def test_selection_flags_change_the_result(capsys):
    inv = fixture("inv-workstation-2x5090-display.json")
    _, out, _ = run(capsys, "check", "--inventory", inv, "--json", "--include-display-gpus")
    display = [f for f in json.loads(out)["findings"] if f["check"] == "display"]
    assert [f["status"] for f in display] == ["warn"]


def test_list_json_is_the_trainers_decision(capsys):
    code, out, _ = run(
        capsys, "list", "--inventory", fixture("inv-workstation-2x5090-display.json"), "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["selected"] == [1, 2]
    gpu0 = data["gpus"][0]
    assert set(gpu0) == {"index", "name", "memory_total_mib", "display_active", "selected", "reasons"}
    assert gpu0["selected"] is False and any("--include-display-gpus" in r for r in gpu0["reasons"])


def test_list_table_explains_every_gpu(capsys):
    code, out, _ = run(capsys, "list", "--inventory", fixture("inv-nothing-selected.json"))
    assert code == 0 and "--min-gpu-memory" in out and "fall back to the CPU" in out


def test_list_checks(capsys):
    code, out, _ = run(capsys, "check", "--list-checks")
    assert code == 0 and "replica-consistency" in out and "compute capability" in out


def test_snapshot_writes_atomically_in_schema(capsys, monkeypatch, tmp_path):
    from diagnostics import nvml
    from diagnostics.inventory import load_inventory

    recorded = load_inventory(FIXTURES / "inv-mixed.json")
    monkeypatch.setattr(nvml, "read_inventory", lambda **kw: recorded)
    target = tmp_path / "snap.json"
    code, _, err = run(capsys, "snapshot", "-o", str(target))
    assert code == 0 and "written" in err
    assert load_inventory(target).gpus == recorded.gpus
    assert [p.name for p in tmp_path.iterdir()] == ["snap.json"]  # no temporary file left


def test_monitor_flags_imbalance(capsys, monkeypatch, tmp_path):
    from diagnostics import nvml
    from diagnostics.inventory import load_inventory

    base = load_inventory(FIXTURES / "inv-geforce-p2p-reported.json")
    import dataclasses

    busy = dataclasses.replace(
        base,
        gpus=(
            dataclasses.replace(base.gpus[0], utilization_gpu_pct=95),
            dataclasses.replace(base.gpus[1], utilization_gpu_pct=40),
        ),
    )
    monkeypatch.setattr(nvml, "read_inventory", lambda **kw: busy)
    csv_path = tmp_path / "m.csv"
    code, out, _ = run(capsys, "monitor", "--interval", "0.01", "--duration", "0.03", "--csv", str(csv_path))
    assert code == 0 and "uneven GPU usage" in out and "GPU 0 averaged 95%" in out
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("time_s,gpu") and len(lines) >= 3


def test_check_does_not_import_tensorflow():
    code = (
        "import sys\nfrom diagnostics import cli\n"
        f"rc = cli.main(['check', '--inventory', {fixture('inv-dgx-8xh100.json')!r}, '--json'])\n"
        "sys.stderr.write('TF-IMPORTED' if 'tensorflow' in sys.modules else 'NO-TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().endswith("NO-TF"), proc.stderr


def test_a_bug_is_one_internal_error_line_and_exit_1(capsys, monkeypatch):
    def broken(ns: object) -> int:
        raise ValueError("a bug\non two lines")

    monkeypatch.delenv("GPUDIAG_DEBUG", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "check", broken)
    code, out, err = run(capsys, "check")
    assert (code, out) == (1, "")
    assert err == (
        "gpudiag: error: internal error: ValueError: a bug on two lines "
        "(rerun with GPUDIAG_DEBUG=1 for details)\n"
    )
    monkeypatch.setenv("GPUDIAG_DEBUG", "1")
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["check"])


def test_ctrl_c_is_exit_130_without_a_line(capsys, monkeypatch):
    def interrupted(ns: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list", interrupted)
    assert run(capsys, "list") == (130, "", "")

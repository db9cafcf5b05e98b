"""`gpudiag compare`: a recorded snapshot against copies of itself changed the way real nodes differ,
through main() in-process (and once through the installed script), for its three exit codes, its
text and its JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from diag_support import FIXTURES
from support import child_env, installed_script

from diagnostics import cli

BASE = FIXTURES / "inv-3x5090-tf221-nccl2251.json"  # a v2 snapshot: 3x RTX 5090, TF 2.21.0, NCCL 2.25.1


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def node(tmp_path: Path, name: str, change: Any = None) -> str:
    """A copy of BASE as another node's snapshot, changed by `change(data)`."""
    data = json.loads(BASE.read_text())
    data["host"] = name
    if change is not None:
        change(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def software(key: str, value: Any):
    def change(data: dict[str, Any]) -> None:
        data["software"][key] = value

    return change


def test_identical_nodes_exit_0(capsys, tmp_path):
    code, out, err = run(capsys, node(tmp_path, "a"), node(tmp_path, "b"), node(tmp_path, "c"))
    assert code == 0 and err == ""
    assert "3 snapshots" in out and "(a)" in out and "(c)" in out
    assert "no difference between the nodes that matters" in out


def test_a_different_tensorflow_breaks_exit_1_naming_files_and_values(capsys, tmp_path):
    a, b, c = node(tmp_path, "a"), node(tmp_path, "b", software("tensorflow", "2.20.0")), node(tmp_path, "c")
    code, out, _ = run(capsys, a, b, c)
    assert code == 1
    [line] = [ln for ln in out.splitlines() if "TensorFlow version" in ln]
    assert line.startswith("BREAKS") and f"2.21.0 in {a}, {c}; 2.20.0 in {b}" in line
    assert "1 breaks" in out.splitlines()[-1]


@pytest.mark.parametrize(
    ("change", "what", "effect"),
    [
        (software("nccl", "2.26.2"), "nccl", "breaks"),
        (software("keras", "3.10.0"), "keras", "breaks"),
        (software("tensorflow", "2.21.1"), "tensorflow", "differs"),  # a patch release
        (software("cudnn", "9.1.0.70"), "cudnn", "differs"),
        (lambda d: d.update(driver_version="580.65.06"), "driver", "differs"),
        (lambda d: d.update(cuda_driver_version="13.0"), "cuda-driver", "differs"),
        (lambda d: d.update(gpus=d["gpus"][:2], links=None), "gpu-count", "breaks"),
    ],
)
def test_each_difference_is_judged(capsys, tmp_path, change, what, effect):
    code, out, _ = run(capsys, node(tmp_path, "a"), node(tmp_path, "b", change), "--json")
    data = json.loads(out)
    assert [(d["what"], d["effect"]) for d in data["differences"]] == [(what, effect)]
    assert code == (1 if effect == "breaks" else 0)


def test_slower_gpus_are_printed_but_exit_0(capsys, tmp_path):
    def rtx_4090(data: dict[str, Any]) -> None:
        for gpu in data["gpus"]:
            gpu.update(name="NVIDIA GeForce RTX 4090", compute_capability="8.9", memory_total_mib=24564)

    a, b = node(tmp_path, "a"), node(tmp_path, "b", rtx_4090)
    code, out, _ = run(capsys, a, b)
    assert code == 0
    lines = out.splitlines()
    model = next(ln for ln in lines if "GPU model" in ln)
    assert model.startswith("SLOWS") and f"RTX 5090 in {a}; NVIDIA GeForce RTX 4090 in {b}" in model
    memory = next(ln for ln in lines if "smallest GPU memory" in ln)
    assert f"31.8 GB in {a}; 24.0 GB in {b}" in memory and "limits the batch" in memory
    assert any(ln.startswith("SLOWS") and "compute capability" in ln for ln in lines)
    assert "3 slows" in lines[-1] and "can train together" in lines[-1]


def test_cards_a_few_mib_apart_are_not_a_difference(capsys, tmp_path):
    def firmware(data: dict[str, Any]) -> None:
        data["gpus"][0]["memory_total_mib"] -= 100

    code, out, _ = run(capsys, node(tmp_path, "a"), node(tmp_path, "b", firmware))
    assert code == 0 and "no difference" in out


def test_gpus_are_counted_as_the_trainer_selects_them(capsys, tmp_path):
    """A GPU outside the recorded CUDA_VISIBLE_DEVICES is no replica; selection flags apply to all."""

    def two_visible(data: dict[str, Any]) -> None:
        data["environment"]["CUDA_VISIBLE_DEVICES"] = "0,1"

    a, b = node(tmp_path, "a"), node(tmp_path, "b", two_visible)
    code, out, _ = run(capsys, a, b, "--json")
    [count] = json.loads(out)["differences"]
    assert code == 1 and count["values"] == {a: "3", b: "2 of 3"}
    code, out, _ = run(capsys, a, b, "--json", "--device-mode", "custom", "--custom-gpus", "0", "1")
    assert code == 0 and json.loads(out)["differences"] == []


def test_json_lists_files_differences_and_summary(capsys, tmp_path):
    a = node(tmp_path, "a")
    b = node(tmp_path, "b", lambda d: (software("tensorflow", "2.19.0")(d), d.update(gpus=d["gpus"][:1])))
    c = node(tmp_path, "c", lambda d: d.update(software=None))
    code, out, _ = run(capsys, a, b, c, "--json")
    data = json.loads(out)
    assert code == 1
    assert data["files"] == [
        {"file": a, "host": "a", "gpus": 3},
        {"file": b, "host": "b", "gpus": 1},
        {"file": c, "host": "c", "gpus": 3},
    ]
    tf = next(d for d in data["differences"] if d["what"] == "tensorflow")
    assert tf["effect"] == "breaks" and tf["values"] == {a: "2.21.0", b: "2.19.0"}  # c records none
    assert tf["label"] == "TensorFlow version" and "same TensorFlow" in tf["why"]
    assert data["summary"] == {"breaks": 2, "slows": 0, "differs": 0}
    assert data["not_compared"] == [
        f"{c} records no software: its TensorFlow, Keras, NCCL and cuDNN were not compared"
    ]
    assert [d["effect"] for d in data["differences"]] == ["breaks", "breaks"]


def test_bad_input_is_one_line_exit_2(capsys, tmp_path):
    good = node(tmp_path, "a")
    not_json = tmp_path / "notes.json"
    not_json.write_text("hello")
    not_snapshot = tmp_path / "results.json"
    not_snapshot.write_text(json.dumps({"results": []}))
    cases = [
        ((good,), "at least two snapshots"),
        ((good, str(tmp_path / "missing.json")), "missing.json: no such file"),
        ((good, str(not_json)), "notes.json: not JSON"),
        ((good, str(not_snapshot)), "results.json: missing required field 'schema'"),
        ((good, str(tmp_path)), "is a directory"),
    ]
    for args, words in cases:
        code, out, err = run(capsys, *args)
        assert code == 2 and out == "", args
        assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, err


def test_installed_script_compares_and_refuses_a_single_file(tmp_path):
    script = installed_script("gpudiag")
    assert script.exists(), f"{script} is missing: install the project (pip install -e .)"
    a, b = node(tmp_path, "a"), node(tmp_path, "b", software("nccl", "2.26.2"))
    env = child_env()
    proc = subprocess.run([str(script), "compare", a, b], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "BREAKS   NCCL version: 2.25.1 in" in proc.stdout, proc.stderr
    proc = subprocess.run([str(script), "compare", a], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("gpudiag: error: compare needs at least two")

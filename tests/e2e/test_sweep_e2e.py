"""`pytest bench --benchmark-only` end to end on CPU logical devices: a tiny sweep writes a report
that agrees with its JSON; workers that fail on purpose are recorded and the sweep goes on; bad
options are pytest's usage error (a bad value names its flag, options that cannot run together are
one line), exit 4, and leave no report behind."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reports import markdown
from reports.figures import report_figures
from reports.plots import PNG_SIGNATURE
from reports.results import validate
from training.loop.faults import WORKER_FAULT_ENV as FAULT_ENV

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ["--cpu-replicas", "2", "--gpus", "1", "2"]
# a sweep of seconds spends most of them starting TensorFlow: no harness share to hold it to
TINY = [*DEVICES, "--batch-sizes", "8", "16", "--model", "cnn", "--steps", "3", "--rounds", "2",
        "--warmup-steps", "2", "--allreduce-bytes", "1K", "64K", "1M",
        "--harness-min-share", "0"]  # fmt: skip


def sweep(
    report_dir: Path, *args: str, fault: str = "", timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", FAULT_ENV: fault}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_sweep.py", "--benchmark-only", "-p", "no:cacheprovider",
         "-q", "--report-dir", str(report_dir), *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
    )  # fmt: skip


def is_png(path: Path) -> bool:
    import matplotlib.image

    data = path.read_bytes()
    return data.startswith(PNG_SIGNATURE) and matplotlib.image.imread(str(path)).ndim == 3


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("sweep") / "report"
    return sweep(out, *TINY), out


@pytest.mark.slow
def test_tiny_sweep_writes_the_report(tiny_report):
    proc, out = tiny_report
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert names == {"scaling.md", "scaling.json", "results.json", "throughput.png", "efficiency.png",
                     "allreduce.png"}  # fmt: skip
    for png in ("throughput.png", "efficiency.png", "allreduce.png"):
        assert is_png(out / png), png
    assert f"scaling report: {out / 'scaling.md'}" in proc.stdout
    # one progress line per case, in run order: 4 training, 4 input, 3 all-reduce cases
    progress = [line for line in proc.stdout.splitlines() if line.startswith("case ")]
    assert len(progress) == 11 and progress[0].startswith("case 1/11: train 1 CPU device x 8: ")
    assert progress[0].endswith(" samples/s") and progress[-1].endswith(" GB/s algbw")
    assert progress[-1].startswith("case 11/11: all-reduce 2 CPU devices 1 MiB: ")


@pytest.mark.slow
def test_tiny_sweep_report_agrees_with_its_json(tiny_report):
    _proc, out = tiny_report
    saved: dict[str, Any] = json.loads((out / "scaling.json").read_text())
    results, figures = saved["results"], saved["figures"]
    assert results == json.loads((out / "results.json").read_text())
    assert [(r["gpus"], r["batch_per_gpu"]) for r in results["train"]] == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert all(
        len(r["round_seconds"]) == 2 for r in results["train"] + results["input"] + results["allreduce"]
    )
    assert [(r["gpus"], r["bytes"]) for r in results["allreduce"]] == [(2, 1024), (2, 65536), (2, 2**20)]
    assert results["device_kind"] == "cpu" and results["failures"] == []
    typed = validate(results)
    recomputed = report_figures(typed)  # from the raw times
    assert figures == json.loads(json.dumps(recomputed.to_json()))
    text = (out / "scaling.md").read_text()
    assert text == markdown.render(typed, recomputed, ["throughput.png", "efficiency.png", "allreduce.png"])
    assert text.startswith("# Scaling report: cnn on CPU logical devices")
    for row in figures["train"]:
        assert f"{row['samples_per_sec']['median']:,.0f}" in text
    harness = results["harness"]
    assert 0 < harness["fraction"] <= 1 and harness["benchmark_seconds"] > 0
    assert f"{harness['fraction']:.0%} of the sweep's" in text
    env = results["environment"]
    assert env["tensorflow"] and env["keras"] and env["cpu"]


@pytest.mark.slow
def test_failing_workers_are_recorded_and_the_sweep_goes_on(tmp_path):
    """1 device: crash at batch 16. 2 devices: hang at 8 (killed after the timeout), OOM at 16."""
    out = tmp_path / "report"
    args = [*DEVICES, "--batch-sizes", "8", "16", "--steps", "2", "--rounds", "1", "--warmup-steps", "1",
            "--allreduce-bytes", "1K", "--worker-timeout", "15", "--harness-min-share", "0"]  # fmt: skip
    proc = sweep(out, *args, fault="crash:16@1,hang:8@2,oom:16@2")
    assert proc.returncode == 1, proc.stdout[-3000:]  # a crash and a hang fail their tests; OOM skips
    results = json.loads((out / "results.json").read_text())
    summaries = sorted(f["summary"] for f in results["failures"])
    assert summaries == [
        "OOM at 16 per CPU device on 2 CPU devices",
        "worker crashed at 16 per CPU device on 1 CPU device",
        "worker hung (killed) at 8 per CPU device on 2 CPU devices",
    ]
    # everything else ran, in fresh workers after each failure
    assert [(r["gpus"], r["batch_per_gpu"]) for r in results["train"]] == [(1, 8)]
    assert len(results["input"]) == 4 and len(results["allreduce"]) == 1
    text = (out / "scaling.md").read_text()
    assert "## Failed configurations" in text and "out of memory at 16 per CPU device" in text
    assert "2 failed, 7 passed, 1 skipped" in proc.stdout  # the 7th: the harness share, held to 0


def collected(*args: str) -> tuple[int, list[str]]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--benchmark-only", "--cpu-replicas", "2", "--collect-only",
         "-q", "-p", "no:cacheprovider", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    return proc.returncode, proc.stdout.splitlines()


def test_the_default_run_is_the_sweep_and_the_self_benchmarks_are_opt_in():
    """`pytest bench --benchmark-only` collects the sweep alone and says how to add the rest;
    `--self-benchmarks -m selfbench` (tox -e selfbench) collects the self-benchmarks alone."""
    code, lines = collected()
    assert code == 0, lines
    tests = [line for line in lines if "::" in line]
    assert tests and all(line.startswith("bench/test_sweep.py::") for line in tests)
    assert "7 self-benchmark(s) not run: add --self-benchmarks (or run `tox -e selfbench`)" in lines
    code, lines = collected("--self-benchmarks", "-m", "selfbench")
    assert code == 0, lines
    modules = {line.split("::")[0] for line in lines if "::" in line}
    names = ("trainer_speed", "gpudiag_speed", "multiworker_speed", "harness_share", "verdict_vs_profile")
    assert modules == {f"bench/test_{name}.py" for name in names}


# A bad value is refused by its option's converter: pytest's usage error names the flag and why.
BAD_VALUES = [
    (["--model", "nope"], "argument --model: unknown --model 'nope': known models are cnn"),
    (["--gpus", "0"], "argument --gpus: values must be >= 1, got 0"),
    (["--batch-sizes", "16", "-8"], "argument --batch-sizes: values must be >= 1, got -8"),
    (["--steps", "0"], "argument --steps: values must be >= 1, got 0"),
    (["--cpu-replicas", "x"], "argument --cpu-replicas: 'x' is not an integer"),
    (["--device-mode", "all"], "argument --device-mode: invalid choice: 'all'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[a[0] for a, _ in BAD_VALUES])
def test_bad_value_is_a_usage_error_naming_the_flag_and_no_report(tmp_path, args, message):
    out = tmp_path / "report"
    proc = sweep(out, *args, timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines[0].startswith("ERROR: usage: ") and "Traceback" not in proc.stdout + proc.stderr
    # argparse's "PROG: error: REASON", PROG being "pytest" or "python -m pytest"
    errors = [line.split(": error: ", 1)[1] for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(message), lines
    assert not out.exists()


# What needs several options or the devices is checked once parsed: one line, exit 4.
BAD_COMBINATIONS = [
    (["--cpu-replicas", "2", "--gpus", "1", "4"], "--gpus 4: more devices than selected (--cpu-replicas 2)"),
    (["--cpu-replicas", "1", "--custom-gpus", "0"], "--custom-gpus needs --device-mode custom"),
]


@pytest.mark.parametrize(("args", "message"), BAD_COMBINATIONS, ids=[a[-2] for a, _ in BAD_COMBINATIONS])
def test_bad_combination_is_one_usage_line_and_no_report(tmp_path, args, message):
    out = tmp_path / "report"
    proc = sweep(out, *args, timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines == [f"ERROR: {message}"]
    assert not out.exists()


def test_unwritable_report_dir_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = sweep(blocker / "report", "--cpu-replicas", "1", timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    expected = f"report directory {blocker / 'report'} cannot be created: {blocker} is not writable"
    assert (proc.stdout + proc.stderr).strip().splitlines() == [f"ERROR: --report-dir: {expected}"]
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_a_sweep_mostly_spent_outside_its_steps_fails_the_harness_test(tmp_path):
    """One short case: TensorFlow's start dominates, so a required share of 99% fails, naming it."""
    args = ["--cpu-replicas", "1", "--gpus", "1", "--batch-sizes", "8", "--steps", "1", "--rounds", "1",
            "--warmup-steps", "1", "--harness-min-share", "0.99", "-k", "train or harness"]  # fmt: skip
    proc = sweep(tmp_path / "report", *args, timeout=180)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert (
        "1 failed, 1 passed" in proc.stdout and "test_the_harness_spends_its_time_in_the_steps" in proc.stdout
    )


@pytest.mark.slow
def test_every_variant_axis_runs_on_cpu_replicas_and_nccl_is_recorded_not_applicable(tmp_path):
    """XLA x mixed precision x cross-device ops (auto, nccl, hierarchical) x steps per call (auto, 1)
    on 2 CPU devices: every training case for every runnable variant, in one worker per cross-device
    ops; NCCL recorded as not applicable; the report puts the variants side by side; all on the user's
    data (--data);
    --benchmark-json carries the GPU details (none here) in pytest-benchmark's machine info."""
    out, bench_json, npz = tmp_path / "report", tmp_path / "bench.json", tmp_path / "data.npz"
    rng = np.random.default_rng(0)  # the user's data: 8x8x3 images of 4 classes
    np.savez(npz, x=rng.normal(size=(128, 8, 8, 3)).astype(np.float32), y=rng.integers(0, 4, 128))
    args = ["--data", str(npz), "--cpu-replicas", "2", "--gpus", "2", "--batch-sizes", "8", "--model", "mlp",
            "--steps", "3",
            "--rounds", "2", "--warmup-steps", "1", "--allreduce-bytes", "1K", "--harness-min-share", "0",
            "--jit-compile", "off", "on", "--mixed-precision", "off", "on",
            "--cross-device-ops", "auto", "nccl", "hierarchical", "--steps-per-execution", "1", "auto",
            "--benchmark-json", str(bench_json)]  # fmt: skip
    proc = sweep(out, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    ran = [(r["variant"]["cross_device_ops"], r["variant"]["jit_compile"], r["variant"]["mixed_precision"],
            r["dtype_policy"]) for r in results["train"]]  # fmt: skip
    assert ran[::2] == ran[1::2] == [
        ("auto", False, False, "float32"), ("auto", False, True, "mixed_float16"),
        ("auto", True, False, "float32"), ("auto", True, True, "mixed_float16"),
        ("hierarchical", False, False, "float32"), ("hierarchical", False, True, "mixed_float16"),
        ("hierarchical", True, False, "float32"), ("hierarchical", True, True, "mixed_float16"),
    ]  # fmt: skip
    # steps per call: auto (the baseline) then 1 for each; one step per call is a call per step
    per_call = [(r["variant"]["steps_per_execution"], r["calls_per_round"]) for r in results["train"]]
    assert [k for k, _ in per_call] == ["auto", 1] * 8
    assert all(calls == 3 for k, calls in per_call if k == 1)
    assert all(1 <= calls <= 3 for _, calls in per_call)
    assert all(math.isfinite(r["loss"]) for r in results["train"])
    assert results["data"] == str(npz) and all(
        r["input_shape"] == [8, 8, 3] and r["examples"] == 128 for r in results["train"]
    )
    assert [r["variant"] for r in results["allreduce"]] == [
        {"cross_device_ops": o} for o in ("auto", "hierarchical")
    ]
    assert len(results["input"]) == 1 and results["failures"] == []
    assert results["variants"]["not_applicable"] == [
        {"gpus": 2, "variant": {"cross_device_ops": "nccl"},
         "reason": "NCCL all-reduce needs GPUs: these are CPU logical devices"}
    ]  # fmt: skip
    text = (out / "scaling.md").read_text()
    assert "## Variants" in text and "| XLA + mixed fp16 + hierarchical all-reduce |" in text.replace(
        "  ", ""
    )
    assert "| XLA + mixed fp16 + hierarchical all-reduce + 1 step per call |" in text.replace("  ", "")
    assert "- 2 CPU device(s), --cross-device-ops nccl: NCCL all-reduce needs GPUs" in text
    machine = json.loads(bench_json.read_text())["machine_info"]
    assert machine["benchmark_device_kind"] == "cpu" and machine["gpus"] == [] and machine["tensorflow"]
    extra = [b["extra_info"] for b in json.loads(bench_json.read_text())["benchmarks"]]
    assert {"jit_compile": True, "mixed_precision": True, "cross_device_ops": "hierarchical"}.items() <= next(
        e
        for e in extra
        if e.get("jit_compile") and e.get("mixed_precision") and e["cross_device_ops"] != "auto"
    ).items()

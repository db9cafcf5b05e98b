"""The trainer checks before it trains: gpudiag's fast checks on the selected GPUs, one line each with
its remedy, a failure exits 1 unless --skip-preflight; CPU runs are never held up; and the plan's
batch-size advice."""

from __future__ import annotations

import subprocess
import sys
import time

from diag_support import FIXTURES

from diagnostics.checks import PREFLIGHT, registry
from diagnostics.checks.base import Finding
from training.__main__ import main as trainer_main
from training.app.preflight import merged, preflight
from training.devices.setup import plan_devices
from training.settings.batch import batch_advice

RTX5090_X3 = str(FIXTURES / "inv-3x5090-tf221-nccl2251.json")  # records TF 2.21 and NCCL 2.25.1


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = trainer_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_three_rtx_5090s_against_the_stock_build_stop_with_one_line_per_problem(capsys):
    code, out, err = run(capsys, "--dry-run", "--inventory", RTX5090_X3, "--global-batch-size", "192")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    jit = next(
        line for line in lines if line.startswith("preflight warn (compute-capability on GPU 0, 1, 2)")
    )
    assert "JIT-compiles" in jit and "CUDA_CACHE_MAXSIZE" in jit and "cannot target sm_120" in jit
    assert "Remedy: " in jit and "TROUBLESHOOTING.md#rtx-5090-and-blackwell" in jit
    nccl = next(line for line in lines if line.startswith("preflight fail (nccl on GPU 0, 1, 2)"))
    assert "NCCL 2.25.1" in nccl and "nvidia-nccl-cu12>=2.26.2" in nccl
    assert (
        lines[-1].startswith("error: the preflight checks above failed") and "--skip-preflight" in lines[-1]
    )


def test_skip_preflight_trains_anyway(capsys):
    code, out, err = run(
        capsys, "--dry-run", "--skip-preflight", "--inventory", RTX5090_X3, "--global-batch-size", "192"
    )
    assert code == 0 and "3 replica(s) on GPUs" in out and "preflight" not in err


def test_a_healthy_server_passes_the_preflight_with_this_machines_software(capsys):
    """The H100 server records no software: this machine's TF (no pip CUDA libraries) only warns."""
    code, _out, err = run(capsys, "--dry-run", "--inventory", str(FIXTURES / "inv-dgx-8xh100.json"))
    assert code == 0 and "preflight fail" not in err


def test_cpu_runs_are_never_held_up(capsys):
    """No driver here: the CPU fallback runs no GPU checks (no "driver" failure), nor does --cpu-replicas."""
    code, _out, err = run(capsys, "--dry-run")
    assert code == 0 and "preflight" not in err
    code, _out, err = run(capsys, "--dry-run", "--cpu-replicas", "2", "--inventory", RTX5090_X3)
    assert code == 0 and "preflight" not in err
    assert preflight(plan_devices(cpu_replicas=2)) == []


def test_the_preflight_is_a_fast_subset_that_never_imports_tensorflow():
    assert set(PREFLIGHT) <= {check_id for check_id, _ in registry()}
    assert not {"strategy", "gpu-smoke", "replica-consistency"} & set(PREFLIGHT)
    plan = plan_devices(inventory=RTX5090_X3)
    start = time.perf_counter()
    findings = preflight(plan)
    assert time.perf_counter() - start < 0.5  # measured: a few milliseconds
    assert {f.check for f in findings} == {"compute-capability", "nccl", "p2p"}
    code = (
        "import sys\nfrom training.__main__ import main\n"
        f"main(['--dry-run', '--inventory', {RTX5090_X3!r}, '--global-batch-size', '192'])\n"
        "sys.stderr.write('TF-IMPORTED' if 'tensorflow' in sys.modules else 'NO-TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().endswith("NO-TF"), proc.stderr


def test_identical_findings_on_several_gpus_merge_into_one_line():
    same = [Finding("x", "warn", f"GPU {i} (RTX 5090) is slow", "fix it", (i,)) for i in range(3)]
    other = Finding("x", "warn", "GPU 3 (RTX 4090) is hot", "cool it", (3,))
    out = merged([*same, other])
    assert [(f.message, f.gpus) for f in out] == [
        ("GPU 0, 1, 2 (RTX 5090) is slow", (0, 1, 2)),
        ("GPU 3 (RTX 4090) is hot", (3,)),
    ]


def test_batch_advice_follows_the_guide():
    """1 GPU 64-128, 2 GPUs 128-256, 4 GPUs 256-512 global: below 64 per GPU the plan says so."""
    assert batch_advice(128, 1) is None and batch_advice(128, 2) is None
    advice = batch_advice(128, 4)
    assert advice is not None and "32 examples per GPU" in advice and "--global-batch-size 256" in advice
    assert "256-512 global" in advice
    assert "--global-batch-size 512" in (batch_advice(64, 8) or "")


def test_the_plan_prints_the_batch_advice_for_gpus_only(capsys):
    code, out, _ = run(capsys, "--dry-run", "--inventory", str(FIXTURES / "example-server-4xa100.json"))
    assert code == 0 and "note: 32 examples per GPU is small for 4 GPU(s)" in out
    code, out, _ = run(
        capsys,
        "--dry-run",
        "--inventory",
        str(FIXTURES / "example-server-4xa100.json"),
        "--global-batch-size",
        "256",
    )
    assert code == 0 and "examples per GPU is small" not in out
    code, out, _ = run(capsys, "--dry-run", "--cpu-replicas", "4")
    assert code == 0 and "examples per GPU is small" not in out


def test_jit_compile_on_rtx_5090s_under_the_stock_build_warns_with_the_remedy(capsys):
    """XLA's ptxas cannot target sm_120 (tensorflow/tensorflow#111958): --jit-compile adds one warning
    naming it and the remedy; without --jit-compile there is none."""
    args = ("--dry-run", "--inventory", RTX5090_X3, "--global-batch-size", "192")
    _code, _out, err = run(capsys, *args, "--jit-compile")
    [xla] = [
        line for line in err.splitlines() if line.startswith("preflight warn (jit-compile on GPU 0, 1, 2)")
    ]
    assert "cannot target sm_120" in xla and "tensorflow/tensorflow#111958" in xla
    assert "train without --jit-compile" in xla and "TROUBLESHOOTING.md#rtx-5090-and-blackwell" in xla
    _code, _out, err = run(capsys, *args)
    assert "preflight warn (jit-compile" not in err

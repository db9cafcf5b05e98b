"""Helpers for the gpudiag check tests: a fixed software stack and contexts from recorded inventories."""

from __future__ import annotations

from pathlib import Path

from diagnostics.checks import Context, Finding, make_context, run_check
from diagnostics.selection import SelectionOptions
from diagnostics.stack import Stack, TfBuild

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The official TensorFlow 2.21 wheel with its pip CUDA libraries and NCCL (build_info.py as shipped).
OFFICIAL_BUILD = TfBuild(True, "12.5.1", "9", ("sm_60", "sm_70", "sm_80", "sm_89", "compute_90"))
OFFICIAL_STACK = Stack(
    python="3.11.7",
    tensorflow="2.21.0",
    tensorflow_distribution="tensorflow",
    tf_build=OFFICIAL_BUILD,
    keras="3.15.1",
    nccl="2.26.2",
    cudnn="9.3.0.75",
    cuda_wheels={
        "nvidia-cudnn-cu12": "9.3.0.75",
        "nvidia-cublas-cu12": "12.5.3.2",
        "nvidia-cuda-runtime-cu12": "12.5.82",
    },
)


def ctx_for(
    fixture: str | None,
    stack: Stack = OFFICIAL_STACK,
    env: dict[str, str] | None = None,
    nvml_error: str = "no NVIDIA driver found: NVML library not loaded",
    **selection: object,
) -> Context:
    """A Context from tests/fixtures/<fixture> (None: a live machine without a driver)."""
    args = SelectionOptions(**selection)  # type: ignore[arg-type]
    if fixture is None:
        from diagnostics.nvml import NvmlUnavailable

        def no_driver() -> object:
            raise NvmlUnavailable(nvml_error)

        return make_context(args, env=env or {}, stack=stack, read_live=no_driver)  # type: ignore[arg-type]
    return make_context(args, str(FIXTURES / fixture), env=env or {}, stack=stack)


def run_one(check_id: str, ctx: Context) -> list[Finding]:
    """One check's findings as `gpudiag check` reports them, its id stamped by the registry; unlike
    run_checks, an exception in the check fails the test instead of becoming a "fail" finding."""
    findings = run_check(ctx, check_id)
    assert all(f.check == check_id for f in findings), findings
    return findings


def statuses(findings: list[Finding]) -> list[str]:
    return [f.status for f in findings]


def worst(findings: list[Finding]) -> str:
    order = ["skip", "pass", "warn", "fail"]
    return max((f.status for f in findings), key=order.index)

"""The readiness checks: the ordered registry, `run_checks` (which stamps each finding with its
check's id) and `summarize`. Each check is a plain function (Context) -> list[Finding] in a module per
family, built on diagnostics.checks.base; its docstring's first line says what it checks, as
`gpudiag check --list-checks` shows it.

The names callers use (`Context`, `Finding`, `make_context`, `see`, ...) are re-exported from base.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from diagnostics.checks import cluster, driver, gpus, health, nccl, software, topology
from diagnostics.checks import deep as deep_checks
from diagnostics.checks.base import (
    GUIDE,
    SECTIONS,
    STATUSES,
    Check,
    Context,
    Finding,
    gpu_list,
    make_context,
    see,
)

__all__ = [
    "GUIDE",
    "SECTIONS",
    "STATUSES",
    "Check",
    "Context",
    "Finding",
    "describe",
    "gpu_list",
    "make_context",
    "registry",
    "run_check",
    "run_checks",
    "run_preflight",
    "see",
    "stamp",
    "summarize",
]


def registry(deep: bool = False) -> list[tuple[str, Check]]:
    """(id, function) in the order the table shows them."""
    # Functions are looked up at each call, not bound at import, so a test can monkeypatch one.
    checks: list[tuple[str, Check]] = [
        ("driver", driver.driver),
        ("tensorflow", software.tensorflow),
        ("cuda-version", software.cuda_version),
        ("compute-capability", gpus.compute_capability),
        ("nccl", software.nccl),
        ("display", gpus.display),
        ("memory", gpus.memory),
        ("selection", gpus.selection),
        ("device-order", gpus.device_order),
        ("p2p", topology.p2p),
        ("pcie", topology.pcie),
        ("pcie-acs", nccl.acs_iommu),
        ("health", health.health),
        ("clocks", nccl.clocks),
        ("shm", nccl.shm),
        ("nccl-env", nccl.nccl_env),
        ("cluster", cluster.cluster),
    ]
    if deep:
        checks += [
            ("strategy", deep_checks.strategy),
            ("gpu-smoke", deep_checks.gpu_smoke),
            ("dcgm", deep_checks.dcgm),
            ("replica-consistency", deep_checks.replica_consistency),
        ]
    return checks


def describe(check: Check) -> str:
    """The first line of a check's docstring: what the user sees."""
    return (check.__doc__ or "").strip().splitlines()[0] if check.__doc__ else ""


def stamp(check_id: str, findings: Iterable[Finding]) -> list[Finding]:
    """The findings with `check_id` filled in where the check left the id empty; a finding a check
    files under another id on purpose keeps it."""
    return [f if f.check else dataclasses.replace(f, check=check_id) for f in findings]


def run_check(ctx: Context, check_id: str, deep: bool = True) -> list[Finding]:
    """One check by id, its findings stamped; unlike run_checks, an exception in it propagates."""
    for known, check in registry(deep):
        if known == check_id:
            return stamp(check_id, check(ctx))
    raise KeyError(f"no check {check_id!r}")


def run_checks(ctx: Context, deep: bool = False, only: Sequence[str] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for check_id, check in registry(deep):
        if only and check_id not in only:
            continue
        try:
            findings.extend(stamp(check_id, check(ctx)))
        except Exception as exc:  # a bug in one check must not hide the others' results
            findings.append(
                Finding(
                    check_id,
                    "fail",
                    f"internal error while checking {describe(check).rstrip('.').lower()}: "
                    f"{type(exc).__name__}: {exc}",
                    "please report this with `gpudiag snapshot -o inventory.json` attached",
                )
            )
    return findings


# The checks the trainer runs on its selected GPUs before it imports TensorFlow: fast (no child
# process, no TensorFlow) and about the software, driver and GPUs a run will use.
PREFLIGHT = ("driver", "tensorflow", "cuda-version", "compute-capability", "nccl", "memory", "p2p", "health")


def run_preflight(ctx: Context) -> list[Finding]:
    """The PREFLIGHT checks on `ctx`'s selected GPUs; only their warnings and failures."""
    return [f for f in run_checks(ctx, only=PREFLIGHT) if f.status in ("warn", "fail")]


def summarize(findings: Sequence[Finding]) -> dict[str, int]:
    return {status: sum(f.status == status for f in findings) for status in STATUSES}

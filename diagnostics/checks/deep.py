"""The --deep checks: `strategy`, `gpu-smoke` and `replica-consistency`. They run TensorFlow in one
child process (diagnostics.probe starts `python -m training.children.probe`) with a timeout; these functions
only start it once, then turn what it reported, or the fact that it hung or crashed, into findings.

An all-reduce that hangs (replica-consistency starts with one) becomes one failure naming its likely
cause, read from what gpudiag knows of the machine (`allreduce_hang_cause`), with the child's last
log lines (NCCL's) in the finding's `log_tail`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from diagnostics import knowledge
from diagnostics.checks.base import Context, Finding, see

if TYPE_CHECKING:  # the probe's child machinery is for --deep only: gpudiag check does not load it
    from diagnostics.probe import ProbeResult

CPU_REPLICAS = 2  # without a selected GPU, MirroredStrategy runs over two logical CPU devices
# Docker's default /dev/shm is 64 MiB; NCCL's shared-memory transport needs more for several GPUs
# (NVIDIA's container guide asks for --shm-size=1g or --ipc=host).
SMALL_SHM_MIB = 512

_HANG_WHY = {
    "strategy": "TensorFlow did not finish setting up the devices (a CUDA initialisation that hangs, or a "
    "PTX JIT compile at start)",
    "gpu-smoke": "the matrix product did not return: a PTX JIT compile that hangs or takes very long (a GPU "
    "without native kernels in this TensorFlow build) or a hung driver",
    "replica-consistency": "the training step did not finish: an all-reduce that hangs (NCCL over broken "
    "peer-to-peer access)",
}
_HANG_REMEDY = {
    "strategy": f"run `gpudiag check` without --deep and fix what it reports {see('strategy-not-working')}",
    "gpu-smoke": f"use a TensorFlow build with native kernels for this GPU {see('rtx-5090-and-blackwell')}",
    "replica-consistency": (
        f"export NCCL_P2P_DISABLE=1 or use --cross-device-ops hierarchical {see('nccl-hangs')}"
    ),
}


def _injected_hang(env: Mapping[str, str]) -> bool:
    # the trainer's fault variable (training/loop/faults.py), read here as text: no training import
    return "allreduce-hang" in env.get("GPUDIAG_FAULT", "").replace(" ", "").split(",")


def _system_causes(system: Any) -> list[str]:
    """Causes among the snapshot's system facts (`Inventory.system`, diagnostics.system.SystemFacts),
    read with defaults: an inventory without them names none."""
    if system is None:
        return []
    from diagnostics.system import redirects

    causes = []
    bridges = [b for b in getattr(system, "acs_bridges", None) or () if redirects(b.acs_ctl)]
    if bridges:
        where = ", ".join(b.address for b in bridges)
        causes.append(f"PCIe ACS redirects P2P traffic at bridge(s) {where} between the GPUs")
    if getattr(system, "iommu", "unknown") == "on":
        causes.append("the IOMMU is on (not passthrough), which breaks GPU peer-to-peer DMA")
    shm = getattr(system, "shm_bytes", None)
    if getattr(system, "in_container", False) and isinstance(shm, int) and shm < SMALL_SHM_MIB * 2**20:
        causes.append(
            f"/dev/shm in this container is {shm / 2**20:g} MiB, too small for NCCL's shared memory"
        )
    return causes


def allreduce_hang_cause(ctx: Context) -> tuple[str, str]:
    """(likely cause, remedy) of an all-reduce that did not finish, from what gpudiag knows here."""
    if _injected_hang(ctx.env):
        return "GPUDIAG_FAULT=allreduce-hang made one replica never join (a fault injected on purpose)", (
            "unset GPUDIAG_FAULT"
        )
    remedy = f"export NCCL_P2P_DISABLE=1 or use --cross-device-ops hierarchical {see('nccl-hangs')}"
    gpus = () if ctx.cpu_replicas else ctx.selected
    if not gpus:
        return "a TensorFlow collective over CPU replicas that blocked (no NCCL is involved on CPUs)", (
            f"rerun the probe by hand to see where it stops {see('strategy-not-working')}"
        )
    causes = _system_causes(getattr(ctx.inventory, "system", None))
    links = (ctx.inventory.links if ctx.inventory is not None else None) or ()
    nvlink = any(link.topology == "nvlink" and link.nvlink_count for link in links)
    if len(gpus) > 1 and any(g.is_geforce for g in gpus) and not nvlink and "NCCL_P2P_DISABLE" not in ctx.env:
        causes.append(
            "P2P over PCIe between GeForce cards without NVLink, reported by the driver but broken on most "
            "such systems, and NCCL_P2P_DISABLE is unset"
        )
    for gpu in gpus:
        major = int((gpu.compute_capability or "0").split(".")[0])
        bad = knowledge.known_bad("nccl", ctx.stack.nccl_version, major)
        if bad is not None:
            causes.append(f"{bad.problem} (fixed in {bad.fixed_in})")
            remedy = f"pip install 'nvidia-nccl-cu12>={bad.fixed_in}'; {remedy}"
            break
    if not causes:
        causes.append(
            "NCCL stuck on a path between the GPUs (P2P, shared memory or network): the log tail names it"
        )
    return "; ".join(causes), remedy


def _results(ctx: Context) -> ProbeResult | str:
    """The child's result (run once per Context), or why it was not run."""
    if "probe" in ctx.cache:
        cached: ProbeResult | str = ctx.cache["probe"]
        return cached
    result: ProbeResult | str
    if ctx.inventory_path is not None:
        result = "not run on a recorded inventory: --deep tests the live machine"
    else:
        cpu = ctx.cpu_replicas or (None if ctx.selected else CPU_REPLICAS)
        from diagnostics import probe

        command = probe.probe_command(() if cpu else ctx.selected, cpu)
        result = probe.run_probe(command, ctx.deep_timeout_s, dict(ctx.env))
    ctx.cache["probe"] = result
    return result


# The three deep checks share one child's result, so their findings are built here for whichever id
# is asked for, and carry that id themselves (the one the child reported them under).
def _findings(ctx: Context, check: str) -> list[Finding]:
    result = _results(ctx)
    if isinstance(result, str):
        return [Finding(check, "skip", result)]
    reported = result.findings.get(check)
    if reported:
        return [
            Finding(check, e["status"], e["message"], e.get("remedy", ""), tuple(e.get("gpus", ())))
            for e in reported
        ]
    gpus = () if ctx.cpu_replicas else tuple(g.index for g in ctx.selected)
    log_tail = tuple(result.log_tail)
    if result.timed_out and result.current == check and result.stage == "allreduce":
        cause, remedy = allreduce_hang_cause(ctx)
        return [
            Finding(
                check,
                "fail",
                f"no answer within {ctx.deep_timeout_s:g} s while running {result.detail}: the all-reduce "
                f"hangs; likely cause: {cause}",
                remedy,
                gpus,
                log_tail,
            )
        ]
    if result.timed_out and result.current == check:
        return [
            Finding(
                check,
                "fail",
                f"no answer within {ctx.deep_timeout_s:g} s while running "
                f"{result.detail or check}: {_HANG_WHY[check]}",
                _HANG_REMEDY[check],
                gpus,
                log_tail,
            )
        ]
    if result.timed_out:
        return [
            Finding(
                check,
                "skip",
                f"not run: the probe was stopped after {ctx.deep_timeout_s:g} s in "
                f"{result.current or 'start-up'}",
            )
        ]
    if check in result.started or not result.started or result.returncode:
        last = result.stderr_tail.splitlines()[-1] if result.stderr_tail else f"exit code {result.returncode}"
        return [
            Finding(
                check,
                "fail",
                f"the TensorFlow probe crashed: {last}",
                f"run `{result.rerun}` to see the full error {see('strategy-not-working')}",
                gpus,
                log_tail,
            )
        ]
    return [Finding(check, "skip", "not run: an earlier deep check failed")]


def strategy(ctx: Context) -> list[Finding]:
    """The trainer's device setup and MirroredStrategy: replicas, mirrored variables, distributed data."""
    return _findings(ctx, "strategy")


def gpu_smoke(ctx: Context) -> list[Finding]:
    """A matrix product on each selected GPU matches the CPU's, within the timeout."""
    return _findings(ctx, "gpu-smoke")


def dcgm(ctx: Context) -> list[Finding]:
    """DCGM's own quick diagnostic (dcgmi diag -r 1) on the selected GPUs, where dcgmi is installed."""
    # nothing to run on a recorded machine, CPU replicas, or no GPU; no row where DCGM is absent
    if ctx.inventory_path is not None or ctx.cpu_replicas or not ctx.selected:
        return []
    from diagnostics.dcgm import run_diag

    return run_diag(ctx.deep_timeout_s, [g.index for g in ctx.selected])


def replica_consistency(ctx: Context) -> list[Finding]:
    """One training step on one device and on N replicas gives the same weights."""
    return _findings(ctx, "replica-consistency")

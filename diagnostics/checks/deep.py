"""The --deep checks: `strategy`, `gpu-smoke` and `replica-consistency`. They run TensorFlow in one
child process (diagnostics.probe starts `python -m training.children.probe`) with a timeout; these functions
only start it once, then turn what it reported, or the fact that it hung or crashed, into findings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diagnostics.checks.base import Context, Finding, see

if TYPE_CHECKING:  # the probe's child machinery is for --deep only: gpudiag check does not load it
    from diagnostics.probe import ProbeResult

CPU_REPLICAS = 2  # without a selected GPU, MirroredStrategy runs over two logical CPU devices

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


def _results(ctx: Context) -> ProbeResult | str:
    """The child's result (run once per Context), or why it was not run."""
    if "probe" in ctx.cache:
        cached: ProbeResult | str = ctx.cache["probe"]
        return cached
    result: ProbeResult | str
    if ctx.inventory_path is not None:
        result = "not run on a recorded inventory: --deep tests the live machine"
    else:
        cpu = None if ctx.selected else CPU_REPLICAS
        from diagnostics import probe

        command = probe.probe_command(ctx.selected, cpu)
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
    gpus = tuple(g.index for g in ctx.selected)
    if result.timed_out and result.current == check:
        return [
            Finding(
                check,
                "fail",
                f"no answer within {ctx.deep_timeout_s:g} s while running "
                f"{result.detail or check}: {_HANG_WHY[check]}",
                _HANG_REMEDY[check],
                gpus,
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
            )
        ]
    return [Finding(check, "skip", "not run: an earlier deep check failed")]


def strategy(ctx: Context) -> list[Finding]:
    """The trainer's device setup and MirroredStrategy: replicas, mirrored variables, distributed data."""
    return _findings(ctx, "strategy")


def gpu_smoke(ctx: Context) -> list[Finding]:
    """A matrix product on each selected GPU matches the CPU's, within the timeout."""
    return _findings(ctx, "gpu-smoke")


def replica_consistency(ctx: Context) -> list[Finding]:
    """One training step on one device and on N replicas gives the same weights."""
    return _findings(ctx, "replica-consistency")

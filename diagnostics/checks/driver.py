"""The `driver` check: NVML loads, the driver's version, the CUDA version it supports, and whether it
is new enough for every GPU's architecture.
"""

from __future__ import annotations

from diagnostics import knowledge
from diagnostics.checks.base import Context, Finding, fail, passed, see

_INSTALL = (
    "install the NVIDIA driver (570 or newer for RTX 50-series / Blackwell) and check that `nvidia-smi` "
    "lists the GPUs; on a machine without NVIDIA GPUs, train on the CPU with "
    "`python -m training --cpu-replicas 2`"
)


def driver(ctx: Context) -> list[Finding]:
    """NVIDIA driver loaded, its version and the CUDA version it supports."""
    if ctx.inventory is None:
        return [fail(ctx.nvml_error or "no NVIDIA driver found", f"{_INSTALL} {see('no-driver-or-no-gpu')}")]
    inv = ctx.inventory
    if inv.driver_version is None:
        why = f": {inv.nvml_error}" if inv.nvml_error else ""
        return [
            fail(
                f"no NVIDIA driver in this inventory ({inv.source}){why}",
                f"{_INSTALL} {see('no-driver-or-no-gpu')}",
            )
        ]
    where = "" if inv.source == "live" else f" (inventory {inv.source})"
    head = f"driver {inv.driver_version}, CUDA {inv.cuda_driver_version or 'unknown'}{where}"
    if not inv.gpus:
        return [
            fail(
                f"{head}, but NVML found no NVIDIA GPU",
                "check that the GPUs are seated and powered, and that `nvidia-smi` lists them "
                f"{see('no-driver-or-no-gpu')}",
            )
        ]
    too_old = []
    for gpu in ctx.in_scope:
        arch = knowledge.architecture_for(gpu.compute_capability)
        if arch and knowledge.version_at_least(inv.driver_version, arch.min_driver_linux) is False:
            too_old.append((gpu, arch))
    if too_old:
        need = max((a.min_driver_linux for _, a in too_old), key=lambda v: knowledge.parse_version(v) or ())
        names = "; ".join(
            f"{g.label()} is {a.name} (compute capability {g.compute_capability}, needs driver "
            f">= {a.min_driver_linux}, CUDA >= {a.min_cuda})"
            for g, a in too_old
        )
        return [
            fail(
                f"{head}: too old for {names}",
                f"install NVIDIA driver {need} or newer {see('driver-and-cuda-versions')}",
                gpus=tuple(g.index for g, _ in too_old),
            )
        ]
    return [passed(f"{head}, {len(inv.gpus)} GPU(s)")]

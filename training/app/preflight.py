"""The trainer's preflight: gpudiag's fast checks (diagnostics.checks.PREFLIGHT) on the GPUs a plan
selected, run before TensorFlow is imported, in a few milliseconds. Each warning and failure is one
line with its remedy; a failure stops the run (exit 1) unless --skip-preflight.

A CPU plan, chosen or fallen back to, is not checked: nothing here applies to it, and a machine
without a driver must still train on its CPU. With --jit-compile, a GPU XLA cannot compile for under
this TensorFlow (knowledge.xla_unavailable, the rule the sweep's XLA variant uses too) is a warning.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TextIO

from diagnostics import knowledge
from diagnostics.checks import Context, Finding, run_preflight, see
from diagnostics.selection import SelectionOptions
from diagnostics.stack import read_stack
from training.devices.setup import DevicePlan


def preflight(plan: DevicePlan, jit_compile: bool = False) -> list[Finding]:
    """The warnings and failures of the preflight checks on `plan`'s GPUs (none for a CPU plan);
    `jit_compile`: the run asks for XLA."""
    if plan.kind != "gpu" or plan.inventory is None or plan.selection is None:
        return []
    inventory, selection = plan.inventory, plan.selection
    replay = inventory.source != "live"
    custom = tuple(selection.selected_indices) if selection.mode == "custom" else ()
    ctx = Context(
        stack=plan.stack or read_stack(),
        inventory=inventory,
        selection=selection,
        args=SelectionOptions(selection.mode, custom, selection.min_memory_gb, selection.include_display),
        env=dict((inventory.environment or {}) if replay else os.environ),
        inventory_path=inventory.source if replay else None,
        stack_origin="recorded" if replay and inventory.software else "replaying" if replay else "live",
    )
    return run_preflight(ctx) + (_xla(ctx) if jit_compile else [])


def _xla(ctx: Context) -> list[Finding]:
    """--jit-compile on GPUs this TensorFlow's XLA cannot compile for: a warning with the remedy."""
    caps = ctx.stack.tf_build.compute_capabilities if ctx.stack.tf_build else ()
    blocked = [g for g in ctx.selected if knowledge.xla_unavailable([g.compute_capability], caps)]
    why = knowledge.xla_unavailable([g.compute_capability for g in blocked], caps)
    if why is None:
        return []
    remedy = (
        "train without --jit-compile on these GPUs, or use a TensorFlow build with their kernels (NVIDIA's "
        f"TensorFlow container, or built from source with CUDA 12.8+) {see('rtx-5090-and-blackwell')}"
    )
    return [Finding("jit-compile", "warn", why, remedy, tuple(g.index for g in blocked))]


def report(findings: list[Finding], out: TextIO) -> bool:
    """Print one line per finding (the same finding on several GPUs once); True when one fails."""
    for f in merged(findings):
        gpus = f" on GPU {', '.join(map(str, f.gpus))}" if f.gpus else ""
        print(f"preflight {f.status} ({f.check}{gpus}): {f.message}. Remedy: {f.remedy}", file=out)
    return any(f.status == "fail" for f in findings)


_LEADING_GPU = re.compile(r"^GPU (\d+) ")


def merged(findings: list[Finding]) -> list[Finding]:
    """Findings that differ only in the GPU they start with ("GPU 1 (RTX 5090) has ...") as one,
    "GPU 0, 1, 2 (RTX 5090) has ...": three identical lines for three identical cards say nothing more."""
    groups: dict[tuple[str, str, str, str], list[Finding]] = {}
    for f in findings:
        key = (f.check, f.status, f.remedy, _LEADING_GPU.sub("GPU * ", f.message))
        groups.setdefault(key, []).append(f)
    out = []
    for (_check, _status, _remedy, message), group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        ids = tuple(i for f in group for i in f.gpus)
        label = ", ".join(map(str, ids))
        out.append(
            dataclasses.replace(group[0], message=message.replace("GPU * ", f"GPU {label} ", 1), gpus=ids)
        )
    return out

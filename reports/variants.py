"""The sweep's variant axes as the results carry them: XLA, mixed precision, the cross-device ops
and the training steps per traced call.

A row's `variant` (reports.results: TrainRow, AllreduceRow, Failure) maps each axis its benchmark
depends on (AXES_OF) to its value; a missing axis (every row of a sweep made before that axis
existed) has its default value. The input pipeline does not depend on any axis and carries none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reports.results import Results

# axis -> its default value, in the order labels and tables list them
# (steps_per_execution: the trainer's own default, `auto`, which the sweep's baseline measures)
AXES: dict[str, Any] = {
    "jit_compile": False,
    "mixed_precision": False,
    "cross_device_ops": "auto",
    "steps_per_execution": "auto",
}
# the axes each benchmark's rows depend on
AXES_OF = {
    "train": ("jit_compile", "mixed_precision", "cross_device_ops", "steps_per_execution"),
    "allreduce": ("cross_device_ops",),
    "input": (),
}
AXIS_FLAGS = {
    "jit_compile": "--jit-compile",
    "mixed_precision": "--mixed-precision",
    "cross_device_ops": "--cross-device-ops",
    "steps_per_execution": "--steps-per-execution",
}


def variant_of(given: dict[str, Any] | None, benchmark: str = "train") -> dict[str, Any]:
    """A row's value (`given`: its `variant`) on each axis its benchmark depends on (defaults filled in)."""
    given = given or {}
    return {axis: given.get(axis, AXES[axis]) for axis in AXES_OF[benchmark]}


def variant_key(variant: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable key, the same for equal variants whichever axes were written out."""
    return tuple((axis, variant.get(axis, default)) for axis, default in AXES.items())


def is_default(variant: dict[str, Any]) -> bool:
    return all(variant.get(axis, default) == default for axis, default in AXES.items())


def describe_value(axis: str, value: Any) -> str:
    if axis == "jit_compile":
        return "XLA" if value else "no XLA"
    if axis == "mixed_precision":
        return "mixed fp16" if value else "float32"
    if axis == "steps_per_execution":
        return f"{value} steps per call" if value != 1 else "1 step per call"
    return f"{value} all-reduce"


def label(variant: dict[str, Any]) -> str:
    """'default', or what differs from it: 'XLA', 'XLA + mixed fp16', 'nccl all-reduce', ..."""
    parts = [
        describe_value(axis, variant[axis])
        for axis, default in AXES.items()
        if axis in variant and variant[axis] != default
    ]
    return " + ".join(parts) or "default"


def default_values() -> str:
    """Every axis' default, described: 'no XLA, float32, auto all-reduce, auto steps per call'."""
    return ", ".join(describe_value(axis, value) for axis, value in AXES.items())


def trainer_flags(variant: dict[str, Any]) -> str:
    """The `python -m training` flags that train as `variant` does ('' for the defaults)."""
    flags = []
    for axis, default in AXES.items():
        value = variant.get(axis, default)
        if value != default:  # switches alone (--jit-compile), the others with their value
            flags.append(AXIS_FLAGS[axis] if isinstance(value, bool) else f"{AXIS_FLAGS[axis]} {value}")
    return " ".join(flags)


def flag_value(value: Any) -> str:
    """How a value is written on the command line: on / off for the switches."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def baseline(results: Results) -> dict[str, Any]:
    """The variant every other is measured against: what the sweep recorded (each axis' first
    value), else the defaults."""
    given = results.variants.baseline if results.variants else {}
    return {axis: given.get(axis, default) for axis, default in AXES.items()}


def is_baseline(variant: dict[str, Any] | None, benchmark: str, base: dict[str, Any]) -> bool:
    return all(value == base[axis] for axis, value in variant_of(variant, benchmark).items())


def baseline_results(results: Results) -> Results:
    """`results` with only the baseline variant's rows: what the scaling tables and plots show
    (a sweep without variants comes back with the same rows)."""
    base = baseline(results)
    return dataclasses.replace(
        results,
        train=[r for r in results.train if is_baseline(r.variant, "train", base)],
        allreduce=[r for r in results.allreduce if is_baseline(r.variant, "allreduce", base)],
    )

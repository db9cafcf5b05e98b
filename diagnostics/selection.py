"""Which GPUs a run uses: the one selection rule shared by the trainer, `gpudiag` and the benchmarks.

`SelectionOptions` is the four selection flags as one value, declared once by
`add_selection_options` (for argparse and pytest alike), validated once, and turned back into
arguments by `to_args`. Child processes are never handed these flags to select again: they get the
resolved devices (`device_args`).

Besides the flags, `Limits` bound the choice: a CUDA_VISIBLE_DEVICES set before the run (a
scheduler's grant: the choice stays within it), and what the installed TensorFlow can use (no GPU
below the lowest compute capability its build has code for; no GPU in MIG mode, since TensorFlow
sees one MIG instance per process at most).

`select_gpus` never raises for a machine that simply has no suitable GPU: the result says so, with
every GPU's reasons, and each reason names the flag or fix that would change it. It raises
SelectionError only for arguments that cannot mean anything (unknown or duplicate ids, a negative
minimum, --custom-gpus naming a GPU the limits rule out).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.cli import finite_number, integer
from common.errors import UserError
from diagnostics import knowledge
from diagnostics.inventory import Gpu, Inventory
from diagnostics.stack import Stack
from diagnostics.visible import VisibleDevices, read_visible

MODES = ("single", "multi", "custom")
DEFAULT_MIN_MEMORY_GB = 8.0
# TensorFlow ignores GPUs with fewer multiprocessors (TF_MIN_GPU_MULTIPROCESSOR_COUNT).
TF_MIN_MULTIPROCESSORS = 8
# NVML reports a little less than the size a card is sold as, after the driver's reservations:
# a card sold as N GB qualifies for --min-gpu-memory N if it shows at least N - 0.5 GB.
_NOMINAL_SLACK_GB = 0.5


class SelectionError(UserError):
    """Selection arguments that cannot be satisfied as given (a user error: exit 2)."""


@dataclass(frozen=True)
class GpuChoice:
    gpu: Gpu
    selected: bool
    reasons: tuple[str, ...] = ()  # why it is excluded, or (custom mode) why it would have been
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """What bounds a selection besides the flags (see the module docstring)."""

    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as set before the run; None: unset
    device_order: str | None = None  # CUDA_DEVICE_ORDER as set before the run
    min_compute_capability: tuple[int, int] | None = None  # the lowest the TensorFlow build can use
    tensorflow: str = "the installed TensorFlow"  # how messages name that build

    @classmethod
    def of(cls, env: Mapping[str, str] | None, stack: Stack | None) -> Limits:
        """The limits of a run with this environment and software (None: unknown, no limit)."""
        env = env or {}
        build = stack.tf_build if stack is not None else None
        lowest = None
        name = cls.tensorflow
        if build is not None and build.is_cuda_build:
            lowest = knowledge.lowest_build_capability(build.compute_capabilities)
            name = f"TensorFlow {stack.tensorflow if stack else ''}".strip()
        return cls(env.get("CUDA_VISIBLE_DEVICES"), env.get("CUDA_DEVICE_ORDER"), lowest, name)


@dataclass(frozen=True)
class Selection:
    mode: str
    min_memory_gb: float
    include_display: bool
    choices: tuple[GpuChoice, ...]
    selected: tuple[Gpu, ...] = field(default=())  # in use order (custom: as listed)
    visible: VisibleDevices | None = None  # a CUDA_VISIBLE_DEVICES set before the run, resolved
    notes: tuple[str, ...] = ()  # what bounded the choice besides the flags, one line each

    @property
    def selected_indices(self) -> list[int]:
        return [g.index for g in self.selected]

    @property
    def warnings(self) -> list[str]:
        return [w for c in self.choices for w in c.warnings]

    def explain(self) -> list[str]:
        """One line per GPU: selected, or excluded and why."""
        lines = []
        for c in self.choices:
            mark = "selected" if c.selected else "excluded: " + "; ".join(c.reasons)
            lines.append(f"{c.gpu.label()}, {c.gpu.memory_total_gb:.1f} GB: {mark}")
        return lines


@dataclass(frozen=True)
class SelectionOptions:
    """`--device-mode`, `--custom-gpus`, `--min-gpu-memory`, `--include-display-gpus` as one value."""

    mode: str = "multi"
    custom_ids: tuple[int, ...] = ()
    min_memory_gb: float = DEFAULT_MIN_MEMORY_GB
    include_display: bool = False

    def validate(self) -> SelectionOptions:
        """The checks that need no inventory; raises SelectionError, returns self."""
        if self.mode not in MODES:
            raise SelectionError(f"unknown --device-mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if not math.isfinite(self.min_memory_gb) or self.min_memory_gb < 0:
            raise SelectionError(f"--min-gpu-memory must be a number >= 0, got {self.min_memory_gb:g}")
        if self.custom_ids and self.mode != "custom":
            raise SelectionError("--custom-gpus needs --device-mode custom")
        if self.mode == "custom" and not self.custom_ids:
            raise SelectionError("--device-mode custom needs --custom-gpus ID [ID ...]")
        seen: set[int] = set()
        for i in self.custom_ids:
            if i < 0:
                raise SelectionError(f"--custom-gpus: GPU ids are >= 0, got {i}")
            if i in seen:
                raise SelectionError(f"--custom-gpus: GPU {i} is listed twice")
            seen.add(i)
        return self

    def select(self, inventory: Inventory, limits: Limits | None = None) -> Selection:
        return select_gpus(
            inventory, self.mode, self.custom_ids, self.min_memory_gb, self.include_display, limits
        )

    def to_args(self) -> list[str]:
        """The flags that give these options again (defaults left out)."""
        args = [] if self.mode == "multi" else ["--device-mode", self.mode]
        if self.custom_ids:
            args += ["--custom-gpus", *map(str, self.custom_ids)]
        if self.min_memory_gb != DEFAULT_MIN_MEMORY_GB:
            args += ["--min-gpu-memory", f"{self.min_memory_gb:g}"]
        if self.include_display:
            args.append("--include-display-gpus")
        return args

    @classmethod
    def from_values(cls, get: Callable[[str], Any]) -> SelectionOptions:
        """From parsed option values: `get(dest)` for each of SELECTION_DESTS, None where not given."""
        mode, custom, min_gb, display = (get(dest) for dest in SELECTION_DESTS)
        return cls(
            mode if mode is not None else "multi",
            tuple(custom or ()),
            DEFAULT_MIN_MEMORY_GB if min_gb is None else float(min_gb),
            bool(display),
        )

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace, prefix: str = "") -> SelectionOptions:
        return cls.from_values(lambda dest: getattr(namespace, prefix + dest, None))


# The option destinations add_selection_options declares, in SelectionOptions' field order.
SELECTION_DESTS = ("device_mode", "custom_gpus", "min_gpu_memory", "include_display_gpus")


def add_selection_options(add: Callable[..., Any], prefix: str = "") -> None:
    """Declare the selection flags with `add`: an argparse parser's or group's `add_argument`, or
    pytest's `addoption` (whose option names share one namespace: `prefix` goes before each dest).

    Every default is None, so a caller can tell a flag given from one left out (the trainer's config
    file and environment come in between); SelectionOptions.from_values fills in the defaults.
    Negative ids and sizes parse: SelectionOptions.validate says why they cannot be used.
    """
    mode, custom, min_gb, display = (prefix + dest for dest in SELECTION_DESTS)
    add(
        "--device-mode",
        dest=mode,
        choices=MODES,
        help="multi (default): every eligible GPU; single: the one with the most memory; "
        "custom: exactly --custom-gpus",
    )
    add("--custom-gpus", dest=custom, type=integer, nargs="+", metavar="ID", help="nvidia-smi GPU indices")
    add(
        "--min-gpu-memory",
        dest=min_gb,
        type=finite_number,
        metavar="GB",
        help=f"leave out smaller GPUs (default {DEFAULT_MIN_MEMORY_GB:g}; a card sold as N GB has N)",
    )
    add(
        "--include-display-gpus",
        dest=display,
        action="store_true",
        default=None,
        help="also use GPUs that drive a display",
    )


def device_args(gpus: Sequence[Gpu] = (), cpu_replicas: int | None = None) -> list[str]:
    """A resolved device set as a child process's arguments (training.devices.setup.plan_from_args reads
    them): the GPUs to make visible, by UUID where known, or a number of CPU logical devices."""
    if cpu_replicas is not None:
        return ["--cpu-replicas", str(cpu_replicas)]
    if not gpus:
        return ["--cpu-replicas", "1"]
    return ["--visible-gpus", *(g.uuid or str(g.index) for g in gpus)]


def memory_reason(gpu: Gpu, min_memory_gb: float) -> str | None:
    """Why a GPU is too small for --min-gpu-memory, or None if it qualifies."""
    if gpu.memory_total_gb + _NOMINAL_SLACK_GB >= min_memory_gb:
        return None
    return f"{gpu.memory_total_gb:.1f} GB < {min_memory_gb:g} GB minimum: lower --min-gpu-memory"


def hard_reasons(gpu: Gpu, limits: Limits | None, visible: VisibleDevices | None) -> list[str]:
    """Why no mode may use this GPU: outside a pre-set CUDA_VISIBLE_DEVICES, or unusable by
    TensorFlow (below its lowest compute capability, or in MIG mode)."""
    reasons = []
    if visible is not None and not visible.allows(gpu.index):
        reasons.append(visible.reason())
    cc = gpu.compute_capability_tuple
    lowest = limits.min_compute_capability if limits is not None else None
    if cc is not None and lowest is not None and cc < lowest:
        arch = knowledge.architecture_for(gpu.compute_capability)
        reasons.append(
            f"compute capability {gpu.compute_capability}"
            + (f" ({arch.name})" if arch else "")
            + f" is below {lowest[0]}.{lowest[1]}, the lowest {limits.tensorflow if limits else ''} has code "
            "for, so TensorFlow ignores it: train on GPUs of compute capability "
            f"{lowest[0]}.{lowest[1]} or newer (or the CPU)"
        )
    if gpu.mig_enabled:
        reasons.append(
            "MIG mode is on: TensorFlow sees at most one MIG instance per process, so multi-GPU "
            f"training needs MIG off: sudo nvidia-smi -i {gpu.index} -mig 0, then reset the GPU "
            f"(nvidia-smi -r -i {gpu.index}) or reboot"
        )
    return reasons


def exclusion_reasons(gpu: Gpu, min_memory_gb: float, include_display: bool) -> list[str]:
    """Every reason the automatic (multi/single) filter leaves this GPU out, besides the limits."""
    reasons = []
    small = memory_reason(gpu, min_memory_gb)
    if small:
        reasons.append(small)
    if gpu.display_active and not include_display:
        reasons.append("display GPU: use --include-display-gpus")
    if gpu.multiprocessor_count is not None and gpu.multiprocessor_count < TF_MIN_MULTIPROCESSORS:
        reasons.append(
            f"{gpu.multiprocessor_count} multiprocessors < {TF_MIN_MULTIPROCESSORS}: TensorFlow "
            "ignores it (set TF_MIN_GPU_MULTIPROCESSOR_COUNT to lower the limit)"
        )
    return reasons


def select_gpus(
    inventory: Inventory,
    mode: str = "multi",
    custom_ids: Sequence[int] | None = None,
    min_memory_gb: float = DEFAULT_MIN_MEMORY_GB,
    include_display: bool = False,
    limits: Limits | None = None,
) -> Selection:
    SelectionOptions(mode, tuple(custom_ids or ()), min_memory_gb, include_display).validate()
    visible = read_visible(limits.visible_devices if limits else None, inventory.gpus)
    notes = _notes(inventory, limits, visible)
    if mode == "custom":
        chosen = _select_custom(
            inventory, list(custom_ids or ()), min_memory_gb, include_display, limits, visible
        )
        return Selection(*chosen, visible=visible, notes=notes)

    reasons = {
        g.index: hard_reasons(g, limits, visible) + exclusion_reasons(g, min_memory_gb, include_display)
        for g in inventory.gpus
    }
    eligible = [g for g in inventory.gpus if not reasons[g.index]]
    if mode == "single" and eligible:
        best = max(eligible, key=lambda g: (g.memory_total_mib, -g.index))
        for g in eligible:
            if g is not best:
                reasons[g.index] = [
                    f"single mode uses one GPU (GPU {best.index} has the most memory): "
                    "use --device-mode multi"
                ]
        eligible = [best]
    choices = tuple(
        GpuChoice(g, selected=not reasons[g.index], reasons=tuple(reasons[g.index])) for g in inventory.gpus
    )
    return Selection(
        mode, min_memory_gb, include_display, choices, tuple(eligible), visible=visible, notes=notes
    )


def _notes(inventory: Inventory, limits: Limits | None, visible: VisibleDevices | None) -> tuple[str, ...]:
    if visible is None:
        return ()
    notes = [visible.describe()]
    mixed = len({(g.name, g.compute_capability) for g in inventory.gpus}) > 1
    order = limits.device_order if limits else None
    if visible.positional and mixed and order != "PCI_BUS_ID":
        notes.append(
            "its indices are read as nvidia-smi's; programs that do not set CUDA_DEVICE_ORDER=PCI_BUS_ID "
            "(the trainer does) number these mixed GPUs fastest first instead"
        )
    return tuple(notes)


def _select_custom(
    inventory: Inventory,
    ids: list[int],
    min_memory_gb: float,
    include_display: bool,
    limits: Limits | None,
    visible: VisibleDevices | None,
) -> tuple[str, float, bool, tuple[GpuChoice, ...], tuple[Gpu, ...]]:
    known = {g.index: g for g in inventory.gpus}
    seen = set(ids)
    for i in ids:
        if i not in known:
            have = ", ".join(str(k) for k in sorted(known)) or "none"
            raise SelectionError(f"--custom-gpus: no GPU {i} on this machine (GPUs: {have})")
        hard = hard_reasons(known[i], limits, visible)
        if hard:
            raise SelectionError(f"--custom-gpus: GPU {i} ({known[i].name}) cannot be used: {hard[0]}")
    choices = []
    for g in inventory.gpus:
        would_exclude = exclusion_reasons(g, min_memory_gb, include_display)
        if g.index in seen:
            warnings = tuple(
                f"GPU {g.index} is used because --custom-gpus lists it, although the automatic "
                f"filter would exclude it ({r})"
                for r in would_exclude
            )
            choices.append(GpuChoice(g, True, tuple(would_exclude), warnings))
        else:
            choices.append(GpuChoice(g, False, ("not listed in --custom-gpus",)))
    selected = tuple(known[i] for i in ids)
    return "custom", min_memory_gb, include_display, tuple(choices), selected

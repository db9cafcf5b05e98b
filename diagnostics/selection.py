"""Which GPUs a run uses: the one selection rule shared by the trainer, `gpudiag` and the benchmarks.

`select_gpus` never raises for a machine that simply has no suitable GPU: the result says so, with
every GPU's reasons, and each reason names the flag that would change it. It raises SelectionError
only for arguments that cannot mean anything (unknown or duplicate ids, a negative minimum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from diagnostics.inventory import Gpu, Inventory

MODES = ("single", "multi", "custom")
DEFAULT_MIN_MEMORY_GB = 8.0
# TensorFlow ignores GPUs with fewer multiprocessors (TF_MIN_GPU_MULTIPROCESSOR_COUNT).
TF_MIN_MULTIPROCESSORS = 8
# NVML reports a little less than the size a card is sold as, after the driver's reservations:
# a card sold as N GB qualifies for --min-gpu-memory N if it shows at least N - 0.5 GB.
_NOMINAL_SLACK_GB = 0.5


class SelectionError(ValueError):
    """Selection arguments that cannot be satisfied as given (a user error: exit 2)."""


@dataclass(frozen=True)
class GpuChoice:
    gpu: Gpu
    selected: bool
    reasons: tuple[str, ...] = ()  # why it is excluded, or (custom mode) why it would have been
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selection:
    mode: str
    min_memory_gb: float
    include_display: bool
    choices: tuple[GpuChoice, ...]
    selected: tuple[Gpu, ...] = field(default=())  # in use order (custom: as listed)

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


def memory_reason(gpu: Gpu, min_memory_gb: float) -> str | None:
    """Why a GPU is too small for --min-gpu-memory, or None if it qualifies."""
    if gpu.memory_total_gb + _NOMINAL_SLACK_GB >= min_memory_gb:
        return None
    return f"{gpu.memory_total_gb:.1f} GB < {min_memory_gb:g} GB minimum: lower --min-gpu-memory"


def exclusion_reasons(gpu: Gpu, min_memory_gb: float, include_display: bool) -> list[str]:
    """Every reason the automatic (multi/single) filter leaves this GPU out."""
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


def validate_selection_args(mode: str, custom_ids: Sequence[int] | None, min_memory_gb: float) -> None:
    """The checks that need no inventory; raises SelectionError."""
    if mode not in MODES:
        raise SelectionError(f"unknown --device-mode {mode!r}: choose one of {', '.join(MODES)}")
    if not math.isfinite(min_memory_gb) or min_memory_gb < 0:
        raise SelectionError(f"--min-gpu-memory must be a number >= 0, got {min_memory_gb:g}")
    if custom_ids and mode != "custom":
        raise SelectionError("--custom-gpus needs --device-mode custom")
    if mode == "custom" and not custom_ids:
        raise SelectionError("--device-mode custom needs --custom-gpus ID [ID ...]")
    seen: set[int] = set()
    for i in custom_ids or ():
        if i < 0:
            raise SelectionError(f"--custom-gpus: GPU ids are >= 0, got {i}")
        if i in seen:
            raise SelectionError(f"--custom-gpus: GPU {i} is listed twice")
        seen.add(i)


def select_gpus(
    inventory: Inventory,
    mode: str = "multi",
    custom_ids: Sequence[int] | None = None,
    min_memory_gb: float = DEFAULT_MIN_MEMORY_GB,
    include_display: bool = False,
) -> Selection:
    validate_selection_args(mode, custom_ids, min_memory_gb)
    if mode == "custom":
        return _select_custom(inventory, list(custom_ids or ()), min_memory_gb, include_display)

    reasons = {g.index: exclusion_reasons(g, min_memory_gb, include_display) for g in inventory.gpus}
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
    return Selection(mode, min_memory_gb, include_display, choices, tuple(eligible))


def _select_custom(
    inventory: Inventory, ids: list[int], min_memory_gb: float, include_display: bool
) -> Selection:
    known = {g.index: g for g in inventory.gpus}
    seen = set(ids)
    for i in ids:
        if i not in known:
            have = ", ".join(str(k) for k in sorted(known)) or "none"
            raise SelectionError(f"--custom-gpus: no GPU {i} on this machine (GPUs: {have})")
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
    return Selection("custom", min_memory_gb, include_display, tuple(choices), selected)

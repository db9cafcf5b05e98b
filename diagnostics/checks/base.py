"""What every readiness check needs, and nothing that needs the checks: the statuses, the guide's
sections a remedy may point to, `Finding` and the builders `passed`/`warn`/`fail`/`skip`, `Context`
(what every check receives) and `make_context`.

Check modules import from here, never from the package `diagnostics.checks`, whose `__init__`
imports them for the registry: that keeps the import graph free of cycles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diagnostics.inventory import Gpu, Inventory, load_inventory
from diagnostics.selection import Limits, Selection, SelectionOptions
from diagnostics.stack import Stack, read_stack

STATUSES = ("pass", "warn", "fail", "skip")
GUIDE = "TROUBLESHOOTING.md"
# Sections of TROUBLESHOOTING.md a remedy may point to (a test keeps these in step with the file).
SECTIONS = (
    "no-driver-or-no-gpu",
    "driver-and-cuda-versions",
    "rtx-5090-and-blackwell",
    "uneven-gpu-usage",
    "out-of-memory",
    "strategy-not-working",
    "nccl-hangs",
    "gpu-numbering",
    "hot-or-throttling-gpus",
    "pcie-links",
    "wrong-results-across-replicas",
    "old-and-mig-gpus",
    "scheduler-assigned-gpus",
    "containers",
    "bug-reports-and-nvidia-smi-dumps",
    "multi-worker",
)


def see(section: str) -> str:
    """A pointer to a section of the guide, appended to remedies."""
    if section not in SECTIONS:
        raise ValueError(f"unknown troubleshooting section {section!r}")
    return f"(see {GUIDE}#{section})"


@dataclass(frozen=True)
class Finding:
    """One line of the report. `check` is the id of the check it belongs to; a check leaves it empty
    (the builders below do) and `run_checks` stamps the id the registry knows it by, so the id is
    written in one place only.
    """

    check: str
    status: str
    message: str
    remedy: str = ""
    gpus: tuple[int, ...] = ()
    # the last lines of a child's log behind the finding (a hung --deep probe: NCCL's); in JSON only
    log_tail: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not isinstance(self.remedy, str) or not isinstance(self.gpus, tuple):
            raise TypeError("Finding.remedy is text and Finding.gpus a tuple of GPU indices")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "status": self.status,
            "gpus": list(self.gpus),
            "message": self.message,
            "remedy": self.remedy,
        }
        if self.log_tail:  # only where there is one: every other finding's JSON stays as it was
            out["log_tail"] = list(self.log_tail)
        return out


# The builders a check returns its findings with. warn and fail take the remedy as a required
# argument: a problem reported without what to do about it is only half a finding.


def passed(message: str, *, gpus: Iterable[int] = ()) -> Finding:
    """A finding of the calling check: nothing to fix."""
    return Finding("", "pass", message, "", tuple(gpus))


def warn(message: str, remedy: str, *, gpus: Iterable[int] = ()) -> Finding:
    """A finding of the calling check: training may run, but slower or less reliably than it should."""
    return Finding("", "warn", message, remedy, tuple(gpus))


def fail(message: str, remedy: str, *, gpus: Iterable[int] = ()) -> Finding:
    """A finding of the calling check: training will not run, or not on the GPUs it should."""
    return Finding("", "fail", message, remedy, tuple(gpus))


def skip(message: str, *, gpus: Iterable[int] = ()) -> Finding:
    """A finding of the calling check: there was nothing to check, and the message says why."""
    return Finding("", "skip", message, "", tuple(gpus))


@dataclass(frozen=True)
class Context:
    """Everything a check may look at; checks never query the machine themselves."""

    stack: Stack
    inventory: Inventory | None = None
    nvml_error: str | None = None  # why the live inventory could not be read
    selection: Selection | None = None
    args: SelectionOptions = field(default_factory=SelectionOptions)
    env: Mapping[str, str] = field(default_factory=dict)
    inventory_path: str | None = None
    deep_timeout_s: float = 180.0
    cpu_replicas: int | None = None  # --deep on this many logical CPU devices instead of the GPUs
    # whose software `stack` is: "live" (this machine), "recorded" (the snapshot's own), "given"
    # (a caller's), or "replaying" (this machine's, standing in for a snapshot that records none)
    stack_origin: str = "live"
    cache: dict[str, Any] = field(default_factory=dict, compare=False)  # the --deep child's results

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        return self.inventory.gpus if self.inventory is not None else ()

    @property
    def selected(self) -> tuple[Gpu, ...]:
        return self.selection.selected if self.selection is not None else ()

    @property
    def in_scope(self) -> tuple[Gpu, ...]:
        """The GPUs a run would use, or every GPU when nothing is selected (still worth reporting)."""
        return self.selected or self.gpus


def make_context(
    args: SelectionOptions,
    inventory_path: str | None = None,
    env: Mapping[str, str] | None = None,
    stack: Stack | None = None,
    read_live: Callable[[], Inventory] | None = None,
) -> Context:
    """Load the inventory (file or live NVML) and select GPUs exactly as the trainer does.

    A snapshot that records its machine's software and environment is judged on those, not on this
    machine's; an older one falls back to this machine's software (`stack_origin` says which).
    Raises InventoryError for an unusable file and SelectionError for flags that cannot mean anything.
    """
    inventory: Inventory | None = None
    nvml_error = None
    if inventory_path is not None:
        inventory = load_inventory(inventory_path)
        nvml_error = inventory.nvml_error
    else:
        # Only a live read needs the NVML module.
        from diagnostics.nvml import NvmlUnavailable, read_inventory

        try:
            inventory = (read_live or read_inventory)()
        except NvmlUnavailable as exc:
            nvml_error = str(exc)
    recorded = inventory.software if inventory_path is not None and inventory is not None else None
    origin = "given" if stack else "recorded" if recorded else "replaying" if inventory_path else "live"
    stack = stack or recorded or read_stack()
    if inventory_path is not None and inventory is not None and inventory.environment is not None:
        env = inventory.environment if env is None else env
    environment = dict(os.environ if env is None else env)
    # A replay is bounded by the CUDA_VISIBLE_DEVICES recorded with it, never by this machine's.
    bound = (inventory.environment if inventory is not None else None) if inventory_path else environment
    selection = None
    if inventory is not None:
        selection = args.select(inventory, Limits.of(bound, stack))
    return Context(
        stack=stack,
        inventory=inventory,
        nvml_error=nvml_error,
        selection=selection,
        args=args,
        env=environment,
        inventory_path=inventory_path,
        stack_origin=origin,
    )


# A check: what it looked at in, findings out (their `check` left empty for run_checks to stamp).
Check = Callable[[Context], list[Finding]]


def gpu_list(gpus: Sequence[Gpu]) -> str:
    """GPUs named the way messages name them: "GPU 0 (RTX 5090), GPU 2 (RTX 5090)"."""
    return ", ".join(g.label() for g in gpus)

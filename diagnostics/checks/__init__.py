"""The readiness checks: `Finding` and `Context` (what every check receives), the ordered registry,
and `run_checks`. Each check is a plain function (Context) -> list[Finding] in a module per family;
its docstring's first line says what it checks, as `gpudiag check --list-checks` shows it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diagnostics.inventory import Gpu, Inventory, load_inventory
from diagnostics.selection import DEFAULT_MIN_MEMORY_GB, Selection, select_gpus
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
)


def see(section: str) -> str:
    """A pointer to a section of the guide, appended to remedies."""
    if section not in SECTIONS:
        raise ValueError(f"unknown troubleshooting section {section!r}")
    return f"(see {GUIDE}#{section})"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    message: str
    remedy: str = ""
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not isinstance(self.remedy, str) or not isinstance(self.gpus, tuple):
            raise TypeError("Finding.remedy is text and Finding.gpus a tuple of GPU indices")

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "gpus": list(self.gpus),
            "message": self.message,
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class SelectionArgs:
    """The trainer's selection flags, kept as given so the --deep child can repeat them."""

    mode: str = "multi"
    custom_ids: tuple[int, ...] = ()
    min_memory_gb: float = DEFAULT_MIN_MEMORY_GB
    include_display: bool = False


@dataclass(frozen=True)
class Context:
    """Everything a check may look at; checks never query the machine themselves."""

    stack: Stack
    inventory: Inventory | None = None
    nvml_error: str | None = None  # why the live inventory could not be read
    selection: Selection | None = None
    args: SelectionArgs = field(default_factory=SelectionArgs)
    env: Mapping[str, str] = field(default_factory=dict)
    inventory_path: str | None = None
    deep_timeout_s: float = 180.0
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
    args: SelectionArgs,
    inventory_path: str | None = None,
    env: Mapping[str, str] | None = None,
    stack: Stack | None = None,
    read_live: Callable[[], Inventory] | None = None,
) -> Context:
    """Load the inventory (file or live NVML) and select GPUs exactly as the trainer does.

    Raises InventoryError for an unusable file and SelectionError for flags that cannot mean anything.
    """
    inventory: Inventory | None = None
    nvml_error = None
    if inventory_path is not None:
        inventory = load_inventory(inventory_path)
    else:
        from diagnostics.nvml import NvmlUnavailable, read_inventory

        try:
            inventory = (read_live or read_inventory)()
        except NvmlUnavailable as exc:
            nvml_error = str(exc)
    selection = None
    if inventory is not None:
        selection = select_gpus(
            inventory, args.mode, list(args.custom_ids), args.min_memory_gb, args.include_display
        )
    return Context(
        stack=stack or read_stack(),
        inventory=inventory,
        nvml_error=nvml_error,
        selection=selection,
        args=args,
        env=dict(os.environ if env is None else env),
        inventory_path=inventory_path,
    )


Check = Callable[[Context], list[Finding]]


def registry(deep: bool = False) -> list[tuple[str, Check]]:
    """(id, function) in the order the table shows them."""
    from diagnostics.checks import deep as deep_checks
    from diagnostics.checks import driver, gpus, health, software, topology

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
        ("health", health.health),
    ]
    if deep:
        checks += [
            ("strategy", deep_checks.strategy),
            ("gpu-smoke", deep_checks.gpu_smoke),
            ("replica-consistency", deep_checks.replica_consistency),
        ]
    return checks


def describe(check: Check) -> str:
    """The first line of a check's docstring: what the user sees."""
    return (check.__doc__ or "").strip().splitlines()[0] if check.__doc__ else ""


def run_checks(ctx: Context, deep: bool = False, only: Sequence[str] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for check_id, check in registry(deep):
        if only and check_id not in only:
            continue
        try:
            findings.extend(check(ctx))
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


def summarize(findings: Sequence[Finding]) -> dict[str, int]:
    return {status: sum(f.status == status for f in findings) for status in STATUSES}


def gpu_list(gpus: Sequence[Gpu]) -> str:
    return ", ".join(g.label() for g in gpus)

"""From a GPU selection to a running MirroredStrategy: `plan_devices()` (no TensorFlow) and
`setup_device_strategy()`, which must run before any TensorFlow operation and refuses to run late.

GPUs are made visible by UUID through CUDA_VISIBLE_DEVICES, never by position: CUDA numbers GPUs
fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and TensorFlow silently skips GPUs with fewer
than 8 multiprocessors, so "GPU 1" in TensorFlow need not be nvidia-smi's GPU 1. A CUDA_VISIBLE_DEVICES
set before the run (a scheduler's grant) bounds the plan, and setup only ever narrows it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from common.errors import UserError
from diagnostics.cluster import ClusterTask
from diagnostics.inventory import Gpu, Inventory, load_inventory
from diagnostics.nvml import NvmlUnavailable, read_inventory
from diagnostics.selection import Limits, Selection, SelectionError, SelectionOptions, device_args
from diagnostics.stack import Stack, read_stack
from diagnostics.visible import read_visible
from training.settings.config import CROSS_DEVICE_OPS

if TYPE_CHECKING:
    import tensorflow as tf


class DeviceSetupError(RuntimeError):
    """The devices cannot be set up as asked (TensorFlow sees other GPUs than planned, a late call)."""


class DeviceFlagError(UserError, DeviceSetupError):
    """Device flags that cannot run together (bad input: exit 2)."""


class NoGpuError(DeviceSetupError):
    """--require-gpu on a machine where no GPU is usable (training failed: exit 1)."""


class LateSetupError(DeviceSetupError):
    """TensorFlow's runtime was initialised before setup_device_strategy() ran."""


LATE_SETUP_MESSAGE = (
    "TensorFlow's runtime was already initialised when setup_device_strategy() ran ({detail}), so "
    "the visible GPUs and CPU replicas can no longer be chosen. Call setup_device_strategy() before "
    "any TensorFlow operation: before creating tensors, models, datasets or strategies, and before "
    "importing code that runs TensorFlow operations at import time."
)


@dataclass(frozen=True)
class DevicePlan:
    """What a run will use, decided without TensorFlow: printed by --dry-run, applied by setup."""

    kind: str  # "gpu" or "cpu"
    gpus: tuple[Gpu, ...] = ()
    cpu_replicas: int = 1
    selection: Selection | None = None
    inventory: Inventory | None = None
    warnings: tuple[str, ...] = ()
    fallback_reason: str | None = None  # why a GPU run fell back to the CPU
    stack: Stack | None = None  # the software the plan was made for (a replay's recorded one)

    @property
    def num_replicas(self) -> int:
        return len(self.gpus) if self.kind == "gpu" else self.cpu_replicas

    @property
    def device_names(self) -> list[str]:
        if self.kind == "gpu":
            return [f"/gpu:{i}" for i in range(len(self.gpus))]
        return [f"/cpu:{i}" for i in range(self.cpu_replicas)]

    def describe(self) -> list[str]:
        if self.kind == "gpu":
            return [
                f"{d} = NVML GPU {g.index} {g.name} ({g.memory_total_gb:.1f} GB, {g.pci_bus_id}, {g.uuid})"
                for d, g in zip(self.device_names, self.gpus, strict=True)
            ]
        return [f"{d} = CPU logical device {i}" for i, d in enumerate(self.device_names)]

    def first(self, count: int) -> DevicePlan:
        """The same plan on its first `count` devices (the sweep's smaller device counts)."""
        if not 1 <= count <= self.num_replicas:
            raise DeviceFlagError(f"{count} devices asked for, {self.num_replicas} planned")
        if self.kind == "gpu":
            return replace(self, gpus=self.gpus[:count])
        return replace(self, cpu_replicas=count)

    def share(self, index: int, count: int) -> DevicePlan:
        """Worker `index` of `count` on this machine (--local-workers, several Slurm tasks per
        node): its equal, disjoint slice of the planned GPUs. CPU plans are not split: each worker
        makes its own CPU replica."""
        if self.kind != "gpu" or count == 1:
            return self
        if len(self.gpus) % count:
            raise DeviceFlagError(
                f"{count} workers on this machine need a multiple of {count} GPUs to split evenly, "
                f"{len(self.gpus)} selected: select {len(self.gpus) - len(self.gpus) % count or count} "
                "(--device-mode custom --custom-gpus ...) or change the number of workers"
            )
        size = len(self.gpus) // count
        return replace(self, gpus=self.gpus[index * size : (index + 1) * size])

    def child_args(self) -> list[str]:
        """This plan's devices as a child process's arguments: it uses them, it does not select."""
        return device_args(self.gpus, None if self.kind == "gpu" else self.cpu_replicas)


@dataclass
class DeviceSetup:
    strategy: tf.distribute.Strategy
    plan: DevicePlan  # this worker's devices
    cross_device_ops: str  # on several workers: the --communication implementation
    warnings: list[str] = field(default_factory=list)
    cluster: ClusterTask | None = None  # None on one machine
    workers: dict[str, dict[str, Any]] | None = None  # each worker's replicas and devices

    @property
    def is_chief(self) -> bool:
        """The one process that writes what the user sees (summary, model, logs, checkpoints)."""
        return self.cluster is None or self.cluster.is_chief

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)


def plan_devices(
    selection: SelectionOptions | None = None,
    cpu_replicas: int | None = None,
    require_gpu: bool = False,
    inventory: Inventory | str | None = None,
) -> DevicePlan:
    """Decide the devices. Raises SelectionError or DeviceFlagError for bad flags, NoGpuError for
    --require-gpu where no GPU is usable."""
    options = (selection or SelectionOptions()).validate()
    if cpu_replicas is not None and cpu_replicas < 1:
        raise DeviceFlagError(f"--cpu-replicas must be >= 1, got {cpu_replicas}")
    if cpu_replicas is not None and require_gpu:
        raise DeviceFlagError("--cpu-replicas and --require-gpu contradict each other: drop one")
    if isinstance(inventory, str):
        inventory = load_inventory(inventory)
    no_driver: str | None = None
    if inventory is None:
        try:
            inventory = read_inventory(include_links=False)
        except NvmlUnavailable as exc:
            no_driver = str(exc)
    if options.mode == "custom" and inventory is None and cpu_replicas is None:
        raise SelectionError(f"--custom-gpus: cannot check GPU ids ({no_driver})")
    chosen, stack = None, None
    if inventory is not None:
        # A replay is planned with its own software and CUDA_VISIBLE_DEVICES where it records them.
        replay = inventory.source != "live"
        stack = (inventory.software if replay else None) or read_stack()
        env = (inventory.environment or {}) if replay else os.environ
        chosen = options.select(inventory, Limits.of(env, stack))
    if cpu_replicas is not None:
        return DevicePlan("cpu", (), cpu_replicas, chosen, inventory, stack=stack)
    if chosen is not None and chosen.selected:
        return DevicePlan("gpu", chosen.selected, 1, chosen, inventory, tuple(chosen.warnings), stack=stack)
    if no_driver:
        reason = no_driver
    elif inventory is not None and not inventory.gpus:
        reason = "NVML found no NVIDIA GPU"
    else:
        assert chosen is not None
        reason = "no GPU is eligible: " + " | ".join(chosen.explain())
    if chosen is not None and chosen.notes:
        reason += " (" + "; ".join(chosen.notes) + ")"
    if require_gpu:
        raise NoGpuError(f"--require-gpu: {reason}")
    return DevicePlan("cpu", (), 1, chosen, inventory, (f"training on the CPU: {reason}",), reason, stack)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """The arguments of a child process handed a resolved plan (DevicePlan.child_args)."""
    devices = parser.add_mutually_exclusive_group(required=True)
    devices.add_argument("--visible-gpus", nargs="+", metavar="UUID", help="exactly these GPUs, in order")
    devices.add_argument("--cpu-replicas", type=int, metavar="N", help="N CPU logical devices")


def plan_from_args(args: argparse.Namespace) -> DevicePlan:
    """The plan a parent resolved, from add_device_args' arguments; nothing is selected again.

    GPUs are looked up in the live inventory by UUID (or index) only to describe them.
    """
    if args.cpu_replicas is not None:
        return plan_devices(cpu_replicas=args.cpu_replicas)
    inventory = read_inventory(include_links=False)
    by_id = {g.uuid: g for g in inventory.gpus if g.uuid} | {str(g.index): g for g in inventory.gpus}
    missing = [i for i in args.visible_gpus if i not in by_id]
    if missing:
        raise DeviceSetupError(f"no GPU {', '.join(missing)} on this machine")
    gpus = tuple(by_id[i] for i in args.visible_gpus)
    return DevicePlan("gpu", gpus, 1, None, inventory)


def runtime_initialized() -> bool:
    """True once TensorFlow's eager context has created its runtime (devices are then fixed)."""
    from tensorflow.python.eager import context  # private, but the only side-effect-free probe

    return context.context()._context_handle is not None


def setup_device_strategy(
    plan: DevicePlan | None = None,
    cross_device_ops: str = "auto",
    cluster: ClusterTask | None = None,
    communication: str = "auto",
    collective_timeout: float = 300.0,
) -> DeviceSetup:
    """Make exactly the planned devices visible and build the MirroredStrategy over them; with a
    `cluster`, MultiWorkerMirroredStrategy over every worker's planned devices (training.devices.multiworker).

    Must run before any TensorFlow operation (MWMS too: "collective ops must be configured at
    program startup"); raises LateSetupError otherwise.
    """
    if cross_device_ops not in CROSS_DEVICE_OPS:
        raise DeviceSetupError(
            f"unknown cross-device ops {cross_device_ops!r}: choose one of {', '.join(CROSS_DEVICE_OPS)}"
        )
    plan = plan or plan_devices()
    # CUDA reads these once, when TensorFlow first touches the driver: set them before importing TF
    # does anything with devices. If CUDA was already initialised they are ignored, which the
    # device-count check below catches.
    if plan.kind == "gpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = narrowed_visible_devices(
            plan, os.environ.get("CUDA_VISIBLE_DEVICES")
        )
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    with start_up_noise_filtered(cpu_only=plan.kind == "cpu"):
        import tensorflow as tf

        if runtime_initialized():
            raise LateSetupError(LATE_SETUP_MESSAGE.format(detail="a TensorFlow operation already ran"))
        _configure_devices(tf, plan)
    warnings = list(plan.warnings)
    ops, note = _cross_device_ops(tf, cross_device_ops, plan)
    if note:
        warnings.append(note)
    if cluster is None:
        strategy = tf.distribute.MirroredStrategy(devices=plan.device_names, cross_device_ops=ops)
        return DeviceSetup(strategy, plan, cross_device_ops, warnings)
    from training.devices import multiworker

    local_gpus = len(plan.gpus) if plan.kind == "gpu" else 0
    strategy = multiworker.make_strategy(tf, cluster, communication, collective_timeout, local_gpus)
    workers = multiworker.exchange(cluster, {"replicas": plan.num_replicas, "devices": plan.describe()})
    problem = multiworker.unequal_replicas(workers)
    if problem:
        raise DeviceSetupError(problem)
    return DeviceSetup(strategy, plan, communication, warnings, cluster=cluster, workers=workers)


def narrowed_visible_devices(plan: DevicePlan, preset: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES value for `plan`'s GPUs (by UUID). A value set before the run is a
    bound: a planned GPU outside it is refused, since narrowing it is all the trainer may do."""
    bound = read_visible(preset, plan.inventory.gpus) if plan.inventory is not None else None
    outside = [g for g in plan.gpus if bound is not None and not bound.allows(g.index)]
    if outside:
        raise DeviceSetupError(
            f"CUDA_VISIBLE_DEVICES={preset!r} was set before this run and does not include "
            f"{', '.join(g.label() for g in outside)}: the trainer only narrows it, never widens it; plan "
            "within it (`gpudiag list` shows which GPUs it allows) or have the scheduler grant them"
        )
    return ",".join(g.uuid or str(g.index) for g in plan.gpus)


def _configure_devices(tf: Any, plan: DevicePlan) -> None:
    try:
        if plan.kind == "gpu":
            gpus = tf.config.list_physical_devices("GPU")
            if len(gpus) != len(plan.gpus):
                raise DeviceSetupError(
                    f"TensorFlow sees {len(gpus)} GPU(s) but {len(plan.gpus)} were selected "
                    f"(CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}): is this TensorFlow "
                    "built with CUDA (pip install 'gpudiag[gpu]'), and did anything initialise CUDA "
                    "before setup_device_strategy()? Run `gpudiag check` for details."
                )
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
        else:
            tf.config.set_visible_devices([], "GPU")
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(plan.cpu_replicas)]
            )
    except RuntimeError as exc:
        if "initialized" in str(exc):
            raise LateSetupError(LATE_SETUP_MESSAGE.format(detail=str(exc).strip())) from None
        raise


# TensorFlow's C++ start-up lines that say nothing a user can act on. They are printed before
# absl logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not silence them.
_START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "port.cc:",  # oneDNN custom operations are on
    "cpu_feature_guard.cc:",
    "To enable the following instructions:",
)
# ... and the ones that only say "no GPU here", noise when the plan is the CPU anyway.
_NO_GPU_NOISE = ("cudart_stub.cc:", "cuda_platform.cc:", "failed call to cuInit", "cuda_executor.cc:")


@contextlib.contextmanager
def start_up_noise_filtered(cpu_only: bool) -> Iterator[None]:
    """Hold back what TensorFlow writes to stderr while it starts, then pass on what matters.

    Works on file descriptor 2, since the noise comes from C++. Unless TF_CPP_MIN_LOG_LEVEL=0
    asks for everything, lines in the lists above are dropped and every other line is kept.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            noise = _START_UP_NOISE + (_NO_GPU_NOISE if cpu_only else ())
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not any(marker in line for marker in noise):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _cross_device_ops(tf: Any, name: str, plan: DevicePlan) -> tuple[Any, str | None]:
    if name == "auto":
        # MirroredStrategy picks NCCL for several GPUs and reduction to one device otherwise
        return None, None
    if name == "nccl" and plan.kind != "gpu":
        return (
            tf.distribute.ReductionToOneDevice(),
            "--cross-device-ops nccl needs GPUs: using reduce-to-one on the CPU",
        )
    factories = {
        "nccl": tf.distribute.NcclAllReduce,
        "hierarchical": tf.distribute.HierarchicalCopyAllReduce,
        "reduce-to-one": tf.distribute.ReductionToOneDevice,
    }
    return factories[name](), None

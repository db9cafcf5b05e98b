"""The Python API for a user's own training script: `setup_device_strategy()` selects devices as
`python -m training` does and builds the strategy; `ThroughputCallback` (training.api.throughput)
measures samples/s in `model.fit`; `BackupAndRestore` (training.api.keras_fit) backs a run across
workers up from the chief alone.

This module imports no TensorFlow: bad arguments are found, and reported as a UserError, before
TensorFlow starts; TensorFlow is imported inside `setup_device_strategy()` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from diagnostics.cluster import ClusterTask
from training.devices import cluster as cluster_mod
from training.devices.setup import DevicePlan, DeviceSetup, plan_devices
from training.settings.batch import per_replica_batch
from training.settings.config import COLLECTIVE_TIMEOUT_S, TrainConfig, validate
from training.settings.table import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

# Where a bad argument's message says it came from (as "--config FILE" does for the trainer).
_ORIGIN = "setup_device_strategy()"
_TEXT_ARGUMENTS = frozenset({"device_mode", "cluster", "cross_device_ops", "communication"})


@dataclass
class StrategySetup:
    """What `setup_device_strategy()` returns: the strategy, its replica count and the plan."""

    device_setup: DeviceSetup
    config: TrainConfig  # the arguments, as the trainer's settings (for printing the plan)

    @property
    def strategy(self) -> tf.distribute.Strategy:
        return self.device_setup.strategy

    @property
    def num_replicas(self) -> int:
        """Replicas in sync: on every worker together under MultiWorkerMirroredStrategy."""
        return self.device_setup.num_replicas

    @property
    def plan(self) -> DevicePlan:
        """This process's devices, as decided before TensorFlow started."""
        return self.device_setup.plan

    @property
    def cluster(self) -> ClusterTask | None:
        """This worker's place in a multi-worker cluster; None on one machine."""
        return self.device_setup.cluster

    @property
    def is_chief(self) -> bool:
        """The one process that should write files (checkpoints, models, logs) in a cluster."""
        return self.device_setup.is_chief

    @property
    def warnings(self) -> list[str]:
        return list(self.device_setup.warnings)

    def print_plan(self, global_batch_size: int, out: Any = None) -> None:
        """Print the devices and the batch split as `python -m training` prints them (to stdout
        unless `out` is given). Raises a UserError if the global batch does not split evenly over
        the replicas, naming the nearest batch sizes that do."""
        out = out or sys.stdout
        per_replica_batch(global_batch_size, self.num_replicas)
        for warning in self.warnings:
            print(f"warning: {warning}", file=out)
        if self.cluster is not None:
            print(cluster_mod.describe(self.cluster, self.plan), file=out)
        config = replace(self.config, global_batch_size=global_batch_size)
        from training.app import render  # its imports are TensorFlow-free, but only needed here

        render.print_devices(config, self.plan, out)


def setup_device_strategy(
    device_mode: str = "multi",
    custom_gpus: Iterable[int] | None = None,
    min_gpu_memory: float = 8.0,
    include_display_gpus: bool = False,
    cpu_replicas: int | None = None,
    cluster: str = "none",
    *,
    cross_device_ops: str = "auto",
    communication: str = "auto",
    collective_timeout: float = COLLECTIVE_TIMEOUT_S,
) -> StrategySetup:
    """Select devices exactly as `python -m training` does and build the strategy over them.

    Each keyword is the trainer's flag of the same name (`device_mode` is `--device-mode`, ...).
    `cluster="none"` (the default) trains on this machine with MirroredStrategy; "auto",
    "tf-config" or "slurm" read TF_CONFIG or the Slurm step and, for several workers, build a
    MultiWorkerMirroredStrategy. Call it once per process, before any TensorFlow operation: it
    raises `LateSetupError` where TensorFlow's runtime has already started, and a `UserError`
    (one line, before TensorFlow is imported) for bad arguments.
    """
    config = _config_of(
        device_mode=device_mode,
        custom_gpus=custom_gpus,
        min_gpu_memory=min_gpu_memory,
        include_display_gpus=include_display_gpus,
        cpu_replicas=cpu_replicas,
        cluster=cluster,
        cross_device_ops=cross_device_ops,
        communication=communication,
        collective_timeout=collective_timeout,
    )
    plan = plan_devices(config.selection, config.cpu_replicas)
    task, plan = cluster_mod.place(config, plan, os.environ)
    # TensorFlow's C++ start-up chatter hides the messages that matter (as in the trainer)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if plan.kind == "cpu" else "2")
    from training.devices.setup import setup_device_strategy as start_devices

    device_setup = start_devices(
        plan, config.cross_device_ops, task, config.communication, config.collective_timeout
    )
    if task is not None:  # Keras 3's model.fit cannot use MultiWorkerMirroredStrategy as it is
        from training.api.keras_fit import fit_ready

        fit_ready(device_setup.strategy)
    return StrategySetup(device_setup, config)


def _config_of(**arguments: Any) -> TrainConfig:
    """The arguments as the trainer's settings, checked by the trainer's own checks (ConfigError).

    The table parses text as it parses a flag ("2" is 2); a Python caller who passes text for a
    number, a flag or the GPU list has made a mistake worth saying, so that is refused first.
    """
    custom = arguments.pop("custom_gpus")
    if custom is not None:
        if isinstance(custom, str) or not isinstance(custom, Iterable):
            raise ConfigError(f"{_ORIGIN}: custom_gpus must be a list of GPU ids, got {custom!r}")
        custom = list(custom)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in custom):
            raise ConfigError(f"{_ORIGIN}: custom_gpus must be a list of GPU ids (ints), got {custom!r}")
        arguments["custom_gpus"] = custom
    for name, value in arguments.items():
        if isinstance(value, str) != (name in _TEXT_ARGUMENTS):
            kind = "a string" if name in _TEXT_ARGUMENTS else "not a string"
            raise ConfigError(f"{_ORIGIN}: {name} must be {kind}, got {value!r}")
    given = {key: value for key, value in arguments.items() if value is not None}
    return validate(TrainConfig().merged(given, _ORIGIN))

"""Where the sweep runs, decided before any worker starts: the cluster (this machine alone,
`--local-workers N` on localhost, or this node's task of a TF_CONFIG or Slurm cluster, read as the
trainer reads it), the device counts each worker sweeps, which variants its devices cannot run, and
the worker processes one step of the sweep starts (`launches`).

In a cluster every case runs on MultiWorkerMirroredStrategy across all the workers, each with the
case's device count; the rows record both. On CPUs a worker has one device there (MWMS makes one
CPU replica per worker), so the sweep's counts are 1.

No TensorFlow here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import UserError
from diagnostics.cluster import ClusterTask, discover
from diagnostics.knowledge import xla_unavailable
from diagnostics.selection import SelectionOptions
from diagnostics.stack import read_stack
from reports.variants import AXES
from training.children.worker_group import Launch
from training.devices.cluster import place_task
from training.devices.launcher import HOST, free_ports
from training.devices.setup import DevicePlan


class PlacementError(UserError):
    """Cluster options that cannot run together or on these devices."""


@dataclass(frozen=True)
class Placement:
    """The cluster every case runs on."""

    workers: int = 1  # processes, each with the case's devices
    local: bool = False  # --local-workers: this process starts all of them, on localhost
    task: ClusterTask | None = None  # --cluster: this node's task (it starts its own worker only)

    @property
    def is_chief(self) -> bool:
        """The process that writes the results and the report."""
        return self.task is None or self.task.is_chief

    @property
    def several(self) -> bool:
        return self.workers > 1 or self.local or self.task is not None


def place(
    cluster: str, local_workers: int | None, plan: DevicePlan, env: Mapping[str, str]
) -> tuple[Placement, DevicePlan]:
    """The cluster and this process's devices in it; raises PlacementError (a UserError)."""
    if local_workers is not None:
        if env.get("TF_CONFIG"):
            raise PlacementError(
                "--local-workers starts its own cluster on localhost, but TF_CONFIG is set: unset it, or "
                "drop --local-workers and run the sweep on every worker with --cluster tf-config"
            )
        if cluster not in ("auto", "none"):
            raise PlacementError(f"--local-workers sets TF_CONFIG for its workers: drop --cluster {cluster}")
        if plan.kind == "cpu" and plan.cpu_replicas > 1:
            raise PlacementError(
                f"--cpu-replicas {plan.cpu_replicas} with --local-workers: each worker has one CPU replica "
                "under MultiWorkerMirroredStrategy; drop --cpu-replicas"
            )
        if plan.kind == "gpu" and plan.num_replicas < local_workers:
            raise PlacementError(
                f"--local-workers {local_workers}: {plan.num_replicas} GPU(s) selected, one at least for each"
            )
        return Placement(workers=local_workers, local=True), plan
    task = discover(cluster, env)
    if task is None:
        return Placement(), plan
    return Placement(workers=task.num_workers, task=task), place_task(task, plan, env)


def per_worker(plan: DevicePlan, placement: Placement) -> int:
    """The most devices one worker can have."""
    if not placement.several:
        return plan.num_replicas
    if plan.kind == "cpu":
        return 1
    return plan.num_replicas // placement.workers if placement.local else plan.num_replicas


def device_counts(
    given: tuple[int, ...], plan: DevicePlan, placement: Placement, selected: str
) -> tuple[int, ...]:
    """The device counts per worker to sweep: those given, or 1, 2, 4, ... up to what one worker has."""
    most = per_worker(plan, placement)
    counts = given or default_counts(most)
    if max(counts) <= most:
        return counts
    if placement.several and plan.kind == "cpu":
        raise PlacementError(
            f"--gpus {max(counts)}: across workers each has one CPU device (MultiWorkerMirroredStrategy); "
            "sweep --gpus 1, or run on GPUs"
        )
    if placement.local:
        raise PlacementError(
            f"--gpus {max(counts)}: {plan.num_replicas} GPU(s) split between {placement.workers} local "
            f"workers leave {most} each"
        )
    raise PlacementError(f"--gpus {max(counts)}: more devices than selected ({selected})")


def check_variants(cross_device_ops: tuple[str, ...], placement: Placement) -> None:
    """Across workers the all-reduce is MultiWorkerMirroredStrategy's own: no cross-device ops axis."""
    other = [ops for ops in cross_device_ops if ops != AXES["cross_device_ops"]]
    if placement.several and other:
        raise PlacementError(
            f"--cross-device-ops {other[0]}: across workers the collectives are "
            "MultiWorkerMirroredStrategy's; drop --cross-device-ops"
        )


def launches(
    plan: DevicePlan, placement: Placement, count: int, ops: str, collective_timeout: float
) -> list[Launch]:
    """The worker processes of the step of the sweep on `count` devices per worker."""
    if not placement.several:
        return [Launch([*plan.first(count).child_args(), "--cross-device-ops", ops])]
    cluster = ["--collective-timeout", f"{collective_timeout:g}"]
    if placement.task is not None:  # this node's task: TF_CONFIG or the Slurm step, inherited
        return [Launch([*plan.first(count).child_args(), *cluster, "--cluster", placement.task.source])]
    addresses = [f"{HOST}:{port}" for port in free_ports(placement.workers)]
    devices = plan.first(count * placement.workers) if plan.kind == "gpu" else plan
    found = []
    for index in range(placement.workers):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        found.append(
            Launch(
                [*devices.share(index, placement.workers).child_args(), *cluster, "--cluster", "tf-config"],
                {"TF_CONFIG": json.dumps(tf_config)},
                name=f"worker {index}",
            )
        )
    return found


def default_counts(selected: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the number selected, and that number itself."""
    counts = [n for n in (2**e for e in range(0, 12)) if n <= selected]
    if selected not in counts:
        counts.append(selected)
    return tuple(counts)


def xla_not_applicable(plan: DevicePlan, counts: tuple[int, ...]) -> tuple[tuple[int, str], ...]:
    """For each device count, why the XLA variant cannot run on its GPUs (the first N planned) under
    this TensorFlow build: sm_120 GPUs without kernels in the build fail in XLA's ptxas."""
    if plan.kind != "gpu":
        return ()
    stack = plan.stack or read_stack()
    build = stack.tf_build.compute_capabilities if stack.tf_build is not None else ()
    found = []
    for n in counts:
        why = xla_unavailable([g.compute_capability for g in plan.gpus[:n]], build)
        if why:
            found.append((n, why))
    return tuple(found)


def selected(plan: DevicePlan, selection: SelectionOptions, cpu_replicas: int | None) -> str:
    """What was selected, and how, for the message of a --gpus beyond it."""
    if cpu_replicas is not None:
        return f"--cpu-replicas {plan.num_replicas}"
    if plan.kind == "gpu":
        return f"{plan.num_replicas} GPU(s) selected in {selection.mode} mode"
    return f"no GPU is usable ({plan.fallback_reason}); use --cpu-replicas N"

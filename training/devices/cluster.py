"""Where this process stands in a multi-worker run, decided before TensorFlow starts: the cluster
(`--cluster`, read by diagnostics.cluster from TF_CONFIG or Slurm), this worker's devices in it, and
the checks of `--local-workers`. Bad input here is a UserError: one line, exit 2, nothing written.
"""

from __future__ import annotations

from collections.abc import Mapping

from common.errors import UserError
from diagnostics.cluster import ClusterTask, discover
from training.devices.setup import DevicePlan
from training.settings.batch import per_replica_batch
from training.settings.config import TrainConfig


def place(
    config: TrainConfig, plan: DevicePlan, env: Mapping[str, str]
) -> tuple[ClusterTask | None, DevicePlan]:
    """The cluster (None: one machine, today's MirroredStrategy) and this worker's devices."""
    task = discover(config.cluster, env)
    if task is None:
        return None, plan
    return task, place_task(task, plan, env)


def place_task(task: ClusterTask, plan: DevicePlan, env: Mapping[str, str]) -> DevicePlan:
    """This worker's devices in `task`'s cluster (the trainer's and the sweep's rule)."""
    if plan.kind == "cpu" and plan.cpu_replicas > 1:
        raise UserError(
            f"--cpu-replicas {plan.cpu_replicas} with {task.num_workers} workers: "
            "MultiWorkerMirroredStrategy makes one CPU replica per worker; drop --cpu-replicas"
        )
    # Several tasks of a Slurm step on one node share its GPUs, each its slice by SLURM_LOCALID,
    # unless Slurm bound GPUs to tasks itself (--gpus-per-task, --gpu-bind): then each task sees
    # only its own already.
    bound = "SLURM_GPUS_PER_TASK" in env or "SLURM_GPU_BIND" in env
    if task.source == "slurm" and task.local_tasks > 1 and not bound:
        plan = plan.share(task.local_rank, task.local_tasks)
    return plan


def local_workers(config: TrainConfig) -> int:
    assert config.local_workers is not None
    return config.local_workers


def check_launch(config: TrainConfig, plan: DevicePlan, env: Mapping[str, str]) -> None:
    """--local-workers N: the checks its workers would each fail, made once and before any starts."""
    count = local_workers(config)
    if env.get("TF_CONFIG"):
        raise UserError(
            "--local-workers starts its own cluster on localhost, but TF_CONFIG is set: unset TF_CONFIG, "
            "or drop --local-workers and start each worker yourself"
        )
    if config.cluster not in ("auto", "tf-config"):
        raise UserError(
            f"--local-workers sets TF_CONFIG for its workers: it cannot run with --cluster {config.cluster}"
        )
    if plan.kind == "cpu" and plan.cpu_replicas > 1:
        raise UserError(
            f"--cpu-replicas {plan.cpu_replicas} with --local-workers: each worker makes one CPU replica "
            "under MultiWorkerMirroredStrategy; drop --cpu-replicas"
        )
    replicas = sum(plan.share(i, count).num_replicas for i in range(count)) if plan.kind == "gpu" else count
    per_replica_batch(config.global_batch_size, replicas)
    if config.dry_run:
        raise UserError("--local-workers starts training processes: it does not combine with --dry-run")


def describe(task: ClusterTask, plan: DevicePlan) -> str:
    """The line each worker prints before its plan, so a user sees who has what."""
    role = " (chief: writes the summary, model, logs and checkpoints)" if task.is_chief else ""
    return (
        f"[{task.name}] {task.address} of {task.num_workers} workers ({task.source}){role}: "
        f"{plan.num_replicas} replica(s) here, {plan.num_replicas * task.num_workers} in all"
    )

"""Training across machines on TensorFlow's own engine, `tf.distribute.MultiWorkerMirroredStrategy`
(MWMS): the strategy for the cluster diagnostics.cluster found (TF_CONFIG or a Slurm job step), the
check that every worker brought as many replicas, the agreement the loop makes after each traced
call, and the one line a survivor prints when a peer is lost.

Why an agreement after each call, and not PreemptionCheckpointHandler: the handler saves a
`tf.train.Checkpoint` through its own manager and ends the process with its own exit code, while
the trainer keeps one checkpoint format (checkpoint.py, with its manifest and fingerprint) and exits
143 after a SIGTERM. One small all-reduce per call, on the same collectives as the gradients, tells
every worker whether any of them was asked to stop, so all stop after the same step and the chief
saves it; it also hands every worker the chief's steps per call, since the calls' collectives must
pair up step for step. On one machine there is nothing to agree and none of this runs.

Exchanges that are not tensors (each worker's replica count and devices) go through the key-value
store of TensorFlow's coordination service, which MWMS starts and every worker can reach.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

from diagnostics.cluster import SLURM_PORT_BASE, ClusterTask

KEY = "gpudiag/worker/{}"  # one key per task in the coordination service's store


def make_strategy(tf: Any, task: ClusterTask, communication: str, timeout_s: float, local_gpus: int) -> Any:
    """MWMS over the cluster, on the devices already made visible (GPUs if any, else one CPU)."""
    if task.source == "slurm" and local_gpus:
        # auto_set_gpu=False: the GPUs were chosen by our selection (and Slurm's binding) already;
        # the resolver must not rewrite CUDA_VISIBLE_DEVICES. Its GPU counts only tell MWMS how many
        # local replicas to make, which must equal what we selected.
        per_host: dict[str, int] = {}
        for address in task.jobs.get("worker", ()):
            host = address.rsplit(":", 1)[0]
            per_host[host] = per_host.get(host, 0) + 1
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=SLURM_PORT_BASE,
            gpus_per_node=local_gpus * max(per_host.values()),
            gpus_per_task=local_gpus,
            auto_set_gpu=False,
        )
    else:
        # TF_CONFIG as found, or the one the Slurm step amounts to (diagnostics.cluster computes it
        # as SlurmClusterResolver does: tests/diagnostics/test_cluster_spec.py): SlurmClusterResolver cannot
        # describe tasks without GPUs (it steps through GPUs per task, 0 on CPU replicas)
        os.environ["TF_CONFIG"] = json.dumps(task.tf_config())
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    implementation = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[communication]
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation, timeout_seconds=timeout_s
    )
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)


def exchange(
    task: ClusterTask, mine: dict[str, Any], key: str = KEY, timeout_ms: int = 0
) -> dict[str, dict[str, Any]]:
    """Publish this worker's facts and read every worker's: {task name: facts}. Blocks until all
    have published (they all have started: MWMS waited for them), or up to `timeout_ms` when it is
    not 0 (then a peer's missing facts raise). A key can be written once per run: each exchange
    takes its own `key` pattern (one "{}" for the task)."""
    from tensorflow.python.eager import context  # the coordination service's store: no public API

    ctx = context.context()
    ctx.set_config_key_value(key.format(task.name.replace(" ", "-")), json.dumps(mine))
    found: dict[str, dict[str, Any]] = {}
    for job in ("chief", "worker"):
        for index in range(len(task.jobs.get(job, ()))):
            name = f"{job} {index}"
            text = ctx.get_config_key_value(key.format(name.replace(" ", "-")), timeout_ms)
            found[name] = json.loads(text)
    return found


def leave_together(timeout_s: float) -> None:
    """Wait until every worker is done (bounded by `timeout_s`) before this one leaves. A worker
    can come out of the last all-reduce while its share is still on the way to the chief (CI saw
    the chief fail there when its peer was killed at that moment): one that left at once could
    fail the chief's last step, and with it the final checkpoint, model and summary. Nothing to do
    if the wait fails: every worker has its exit code already."""
    from tensorflow.python.eager import context

    with contextlib.suppress(Exception):  # a peer gone or late: leaving is all that is left to do
        context.context().wait_at_barrier("training-leave", int(timeout_s * 1000))


def unequal_replicas(workers: dict[str, dict[str, Any]]) -> str | None:
    """The one line when workers brought different replica counts, else None."""
    counts = {name: int(facts["replicas"]) for name, facts in workers.items()}
    if len(set(counts.values())) <= 1:
        return None
    listed = ", ".join(f"{name} has {n}" for name, n in counts.items())
    return (
        f"the workers have different numbers of replicas ({listed}): MultiWorkerMirroredStrategy "
        "needs the same on every worker; select as many GPUs on each (--device-mode custom "
        "--custom-gpus ...), or the same --cpu-replicas"
    )


class Agreement:
    """After each traced call: (did any worker ask to stop, the chief's steps for the next call)."""

    def __init__(self, strategy: Any, is_chief: bool, local_replicas: int) -> None:
        import tensorflow as tf

        self._tf = tf
        self.is_chief, self.local_replicas = is_chief, local_replicas

        @tf.function
        def agree(values: Any) -> Any:
            # every replica of every worker contributes its worker's values: the sum over all
            # replicas is what the loop needs (a count of stop requests; the chief's K, once)
            per_replica = strategy.run(lambda v: v, args=(values,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        self._agree = agree

    def __call__(self, stop_requested: bool, k: int) -> tuple[bool, int]:
        chief_k = k / self.local_replicas if self.is_chief else 0.0
        values = self._tf.constant([1.0 if stop_requested else 0.0, chief_k], self._tf.float32)
        stops, agreed_k = self._agree(values).numpy().tolist()
        return stops > 0, max(1, round(agreed_k))


# What a collective raises when a peer is gone: the peer closed its connection, stopped sending
# heartbeats, or did not answer within --collective-timeout.
_LOST_PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError")
_UNHEALTHY = re.compile(r"unhealthy[^/]*/job:(\w+)/replica:\d+/task:(\d+)", re.S)
_REPORTED = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")


def lost_peer(exc: BaseException) -> bool:
    """True for the errors a collective raises when a peer died or stopped answering."""
    text = str(exc)
    if type(exc).__name__ in _LOST_PEER_ERRORS:
        return True
    return type(exc).__name__ in ("InternalError", "UnknownError") and (
        "ollective" in text or "heartbeat" in text
    )


def lost_peer_message(exc: BaseException, task: ClusterTask, timeout_s: float) -> str:
    """One line: who was lost (as the error names it, with its address), and how to resume."""
    text = " ".join(str(exc).split())
    peers = [(job, int(index)) for pattern in (_UNHEALTHY, _REPORTED) for job, index in pattern.findall(text)]
    others = [(job, i) for job, i in peers if f"{job} {i}" != task.name and i < len(task.jobs.get(job, ()))]
    if others:
        job, index = others[0]
        lost = f"lost {job} {index} ({task.jobs[job][index]})"
    elif type(exc).__name__ == "DeadlineExceededError":
        lost = f"a peer did not answer within --collective-timeout {timeout_s:g} s"
    else:
        lost = "lost a peer"
    return (
        f"{task.name}: {lost}: {type(exc).__name__}; training stopped. Run every worker's command "
        "again to resume from the chief's newest checkpoint (--checkpoint-dir on storage all workers see)"
    )

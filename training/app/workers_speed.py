"""Which worker of a multi-worker run is the slow one: the summary's "workers_speed" object and its
line.

Under MultiWorkerMirroredStrategy every worker steps together (each step's all-reduce waits for all
of them), so every worker's own rate is the cluster's rate: the slowest worker's. What differs
between a slow and a fast worker is the time its own share of a step takes before the all-reduce:
its replica's forward and backward pass (what a slower GPU or host slows). So at the end of the
run each worker times that alone (`solo_step_seconds`: its model on one per-replica batch of the
run's data, with the gradient taken and not applied, no collective), the workers exchange the
figures through the coordination service (training.devices.multiworker.exchange), and `judge`
names the slowest with its ratio to the fastest. On one machine there is nothing to compare and
none of this runs.

`judge` and `describe` are pure (no TensorFlow: tests/training/test_workers_speed.py).
"""

from __future__ import annotations

import time
from typing import Any

# Slower than the fastest by 30%: more than the timing's noise, and every step waits that long
SLOW_RATIO = 1.3
KEY = "gpudiag/speed/{}"  # one key per task in the coordination service's store
# timed: the best of up to TIMED_CALLS passes after the one that traces, within BUDGET_SECONDS
TIMED_CALLS, BUDGET_SECONDS = 5, 2.0
EXCHANGE_TIMEOUT_MS = 60_000  # a peer that never publishes: no comparison, not a hang


def judge(per_worker: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """{"per_worker", "fastest", "slowest", "ratio"} from each worker's {"address",
    "compute_seconds"}; None with fewer than two workers timed."""
    timed = {name: facts for name, facts in per_worker.items() if facts.get("compute_seconds")}
    if len(timed) < 2:
        return None
    fastest = min(timed, key=lambda name: timed[name]["compute_seconds"])
    slowest = max(timed, key=lambda name: timed[name]["compute_seconds"])
    ratio = timed[slowest]["compute_seconds"] / timed[fastest]["compute_seconds"]
    return {"per_worker": per_worker, "fastest": fastest, "slowest": slowest, "ratio": round(ratio, 3)}


def describe(found: dict[str, Any] | None) -> str | None:
    """The summary's line when the slowest worker is SLOW_RATIO times slower than the fastest."""
    if not found or found["ratio"] < SLOW_RATIO:
        return None
    slow, fast = found["per_worker"][found["slowest"]], found["per_worker"][found["fastest"]]
    return (
        f"{found['slowest']} ({slow.get('address', '?')}) computes its steps {found['ratio']:.1f}x slower "
        f"than {found['fastest']} ({slow['compute_seconds'] * 1000:.3g} ms against "
        f"{fast['compute_seconds'] * 1000:.3g} ms for one replica's forward and backward pass): "
        "the others wait for it every step; check its GPUs and host with gpudiag check"
    )


# -- measuring (TensorFlow) ---------------------------------------------------------------------


def measure(trainer: Any) -> dict[str, Any] | None:
    """Time this worker's pass, exchange the figures, judge. Every worker of a run must call it
    (each waits for the others' figures); None on one machine or where the exchange failed."""
    task = trainer.setup.cluster
    if task is None:
        return None
    from training.devices import multiworker

    try:
        seconds: float | None = solo_step_seconds(trainer)
    except Exception:  # a figure missing must not keep the peers waiting for it
        seconds = None
    mine = {"address": task.address, "compute_seconds": seconds}
    try:
        found = multiworker.exchange(task, mine, key=KEY, timeout_ms=EXCHANGE_TIMEOUT_MS)
    except Exception:  # a peer gone at the end: the run's results stand without this
        return None
    return judge(found)


def solo_step_seconds(trainer: Any) -> float | None:
    """Seconds of one replica's forward and backward pass on one per-replica batch of the run's
    data, alone (no all-reduce, no update): the best of a few passes after the one that traces."""
    import tensorflow as tf

    from training.inputs import data as data_mod
    from training.inputs.streaming import unrecorded

    model, loss_fn = trainer.model, trainer.loss_fn
    batch = trainer.per_replica_batch_size
    with unrecorded():  # not the run's batch: tests that record the run's batches must not see it
        x, y = next(
            iter(data_mod.make_dataset(trainer.examples, trainer.global_batch_size, trainer.config.seed))
        )
    x, y = x[:batch], y[:batch]

    @tf.function
    def solo(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            # inference mode: a training pass would move batch norm's statistics after training
            loss = tf.reduce_sum(loss_fn(y, model(x, training=False))) / batch
        grads = tape.gradient(loss, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads if g is not None])

    solo(x, y).numpy()  # traces
    faults = trainer.faults
    best, started = None, time.perf_counter()
    for _ in range(TIMED_CALLS):
        begun = time.perf_counter()
        solo(x, y).numpy()
        if faults is not None:
            faults.after_compute(time.perf_counter() - begun)
        elapsed = time.perf_counter() - begun
        best = elapsed if best is None else min(best, elapsed)
        if time.perf_counter() - started > BUDGET_SECONDS:
            break
    return best

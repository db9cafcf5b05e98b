"""`python -m training.children.probe`: the TensorFlow side of `gpudiag check --deep` (diagnostics.probe
starts it by name). It is handed the devices gpudiag selected (`--visible-gpus UUID...` or
`--cpu-replicas N`), sets them up with the trainer's own `setup_device_strategy`, and reports each
deep check as JSON lines on its channel (`common.child`): "start" before a stage, so a hang can be
named, then a "finding". `replica-consistency` starts with a timed all-reduce of a small tensor,
the collective a training step hangs in when NCCL's path between the GPUs is broken (its NCCL log,
NCCL_DEBUG=INFO, goes to stderr for gpudiag to keep); GPUDIAG_FAULT=allreduce-hang makes the last
replica never join it, so that the parent's deadline ends the child.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from common.child import Channel, open_channel
from diagnostics.probe import ALLREDUCE_FLOATS, INJECT_ENV, RELATIVE_TOLERANCE
from training.devices.setup import (
    DeviceSetupError,
    add_device_args,
    plan_from_args,
    runtime_initialized,
    setup_device_strategy,
)
from training.loop.faults import FAULT_ENV, probe_fault


def injected(check: str) -> float | None:
    """The fault GPUDIAG_PROBE_INJECT asks this check to see, or None: a self-test hook, not for users.

    "CHECK[:SIZE],...": `strategy` splits a global batch unevenly; `gpu-smoke:S` makes device 0's
    matrix product off by a relative S; `replica-consistency:S` adds to replica 0's gradients what
    moves every weight by a relative S through the real all-reduce (so S just over or just under
    RELATIVE_TOLERANCE tests the threshold itself).
    """
    for part in os.environ.get(INJECT_ENV, "").split(","):
        name, _, size = part.strip().partition(":")
        if name == check:
            return float(size) if size else 1.0
    return None


class Events:
    """What the probe tells gpudiag, over the channel opened before TensorFlow starts (so that
    TensorFlow's own output never reaches it): a check starting, a finding."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def start(self, check: str, **fields: Any) -> None:
        self.channel.send({"event": "start", "check": check, **fields})

    def finding(
        self, check: str, status: str, message: str, remedy: str = "", gpus: Sequence[int] = ()
    ) -> None:
        self.channel.send(
            {"event": "finding", "check": check, "status": status, "message": message, "remedy": remedy,
             "gpus": list(gpus)}
        )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    events = Events(open_channel())  # before TensorFlow: its output must not reach the channel
    parser = argparse.ArgumentParser(
        prog="python -m training.children.probe", description=__doc__.split("\n")[0]
    )
    add_device_args(parser)
    args = parser.parse_args(argv)

    events.start("strategy", detail="setting up the trainer's devices and MirroredStrategy")
    try:
        plan = plan_from_args(args)
    except (DeviceSetupError, ValueError) as exc:
        events.finding("strategy", "fail", f"the devices gpudiag selected cannot be planned: {exc}")
        return 0
    gpus = [g.index for g in plan.gpus]
    if runtime_initialized():
        events.finding(
            "strategy",
            "fail",
            "TensorFlow's runtime was initialised before the trainer's setup ran",
            "call setup_device_strategy() before any TensorFlow operation",
            gpus,
        )
        return 0
    try:
        setup = setup_device_strategy(plan)
    except DeviceSetupError as exc:
        events.finding(
            "strategy",
            "fail",
            f"the trainer's device setup failed: {exc}",
            "run `gpudiag check` (without --deep) and fix what it reports",
            gpus,
        )
        return 0
    import tensorflow as tf

    # TF32 would make the GPU-vs-CPU and 1-vs-N comparisons inexact on Ampere and newer.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    _check_strategy(events, tf, setup, gpus)
    _check_smoke(events, tf, setup, gpus)
    _check_consistency(events, tf, setup, gpus)
    return 0


def _where(setup: Any) -> str:
    return "; ".join(setup.plan.describe())


def _check_strategy(events: Events, tf: Any, setup: Any, gpus: list[int]) -> None:
    import keras
    import numpy as np

    strategy, plan = setup.strategy, setup.plan
    problems = []
    if setup.num_replicas != plan.num_replicas:
        problems.append(f"{setup.num_replicas} replicas for {plan.num_replicas} planned devices")
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(model.trainable_variables)
    variables = [("model", v) for v in model.weights] + [("optimizer", v) for v in optimizer.variables]
    for owner, var in variables:
        copies = strategy.experimental_local_results(getattr(var, "value", var))
        if len(copies) != setup.num_replicas:
            problems.append(f"{owner} variable {var.name} has {len(copies)} copies, not {setup.num_replicas}")
    global_batch = 4 * setup.num_replicas + (1 if injected("strategy") else 0)
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((global_batch * 2, 8), "float32")).batch(global_batch)
    first = next(iter(strategy.experimental_distribute_dataset(ds)))
    parts = strategy.experimental_local_results(first)
    sizes = [int(p.shape[0]) for p in parts]
    if len(parts) != setup.num_replicas or set(sizes) != {4}:
        problems.append(
            f"a global batch of {global_batch} was split into {sizes}, not {setup.num_replicas} x 4"
        )
    summary = (
        f"MirroredStrategy with {setup.num_replicas} replica(s) ({_where(setup)}), "
        f"{len(variables)} model and optimizer variables mirrored, dataset distributed"
    )
    if problems:
        events.finding(
            "strategy", "fail", "; ".join(problems), "see TROUBLESHOOTING.md#strategy-not-working", gpus
        )
    else:
        events.finding(
            "strategy", "pass", f"trainer's setup ran before any TensorFlow op; {summary}", "", gpus
        )


def _check_smoke(events: Events, tf: Any, setup: Any, gpus: list[int]) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 256)).astype("float32")
    b = rng.standard_normal((256, 256)).astype("float32")
    expected = a.astype("float64") @ b.astype("float64")
    bad, timings = [], []
    for name, line in zip(setup.plan.device_names, setup.plan.describe(), strict=True):
        events.start("gpu-smoke", detail=line, final=False)
        t0 = time.monotonic()
        with tf.device(name):
            got = tf.linalg.matmul(tf.constant(a), tf.constant(b)).numpy()
        off = injected("gpu-smoke")
        if off and name == setup.plan.device_names[0]:
            got = got * (1 + off)
        timings.append(f"{name} {time.monotonic() - t0:.2f} s")
        error = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
        if not error < RELATIVE_TOLERANCE:
            bad.append(f"{line}: relative error {error:.1e}")
    if bad:
        events.finding(
            "gpu-smoke",
            "fail",
            "matrix product differs from the CPU's on " + "; ".join(bad),
            "check the card's health (ECC, clocks) and driver; see "
            "TROUBLESHOOTING.md#wrong-results-across-replicas",
            gpus,
        )
    else:
        events.finding(
            "gpu-smoke",
            "pass",
            "256x256 matrix product matches the CPU's on every device ("
            + ", ".join(timings)
            + ", first call includes kernel loading)",
            "",
            gpus,
        )


LEARNING_RATE = 0.1


def _one_step(
    tf: Any, keras: Any, strategy: Any, weights: list[Any], x: Any, y: Any, shift: Sequence[float] = ()
) -> list[Any]:
    """One SGD step on the global batch (x, y) under `strategy` (None: no strategy, one device).

    `shift`, per variable, is added to replica 0's gradient (the self-test's fault): the all-reduce
    sums it into every replica's update, so each weight moves by LEARNING_RATE x shift more.
    """
    global_batch = int(x.shape[0])

    def build() -> tuple[Any, Any]:
        model = keras.Sequential(
            [keras.Input((x.shape[1],)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]
        )
        model.set_weights(weights)
        return model, keras.optimizers.SGD(LEARNING_RATE)

    if strategy is None:
        model, optimizer = build()
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
        )
        return list(model.get_weights())

    with strategy.scope():
        model, optimizer = build()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch)
    batch = next(iter(strategy.experimental_distribute_dataset(ds)))

    @tf.function
    def step(xb: Any, yb: Any) -> None:
        with tf.GradientTape() as tape:
            per_example = tf.square(model(xb) - yb)[:, 0]
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        if shift:
            ctx = tf.distribute.get_replica_context()
            # replica 0's share goes wrong: what a broken P2P path or all-reduce does to one GPU
            first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), grads[0].dtype)
            grads = [g + first * d for g, d in zip(grads, shift, strict=True)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    strategy.run(step, args=batch)
    copies = [strategy.experimental_local_results(getattr(v, "value", v)) for v in model.trainable_variables]
    return [[c.numpy() for c in per_var] for per_var in copies]


def _never_returns(replica: Any, value: Any) -> Any:
    """The injected hang: the last replica sleeps instead of contributing, so the others wait in the
    collective for it, as they do for a GPU whose NCCL transport is stuck."""
    print(f"{FAULT_ENV}=allreduce-hang: replica {int(replica)} never joins the all-reduce", file=sys.stderr)
    sys.stderr.flush()
    while True:
        time.sleep(1)


def _allreduce(events: Events, tf: Any, setup: Any) -> tuple[str | None, float]:
    """Sum a small tensor over the replicas, timed: (what went wrong or None, seconds)."""
    n = setup.num_replicas
    hang = probe_fault("allreduce-hang")
    events.start(
        "replica-consistency",
        detail=f"an all-reduce of {ALLREDUCE_FLOATS} float32 over {n} replica(s) ({_where(setup)})",
        stage="allreduce",
        final=False,
    )

    def pick(replica: Any, value: Any) -> Any:
        return _never_returns(replica, value) if int(replica) == n - 1 else value

    @tf.function
    def contribute() -> Any:
        ctx = tf.distribute.get_replica_context()
        value = tf.fill([ALLREDUCE_FLOATS], tf.cast(ctx.replica_id_in_sync_group + 1, tf.float32))
        if hang:
            value = tf.py_function(pick, [ctx.replica_id_in_sync_group, value], tf.float32)
            value.set_shape([ALLREDUCE_FLOATS])
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)

    t0 = time.monotonic()
    sums = setup.strategy.experimental_local_results(setup.strategy.run(contribute))
    seconds = time.monotonic() - t0
    expected = n * (n + 1) / 2  # replica i contributes i + 1
    wrong = [i for i, s in enumerate(sums) if abs(float(s.numpy().max()) - expected) > 0]
    if wrong or len(sums) != n:
        return (
            f"the all-reduce over {n} replica(s) returned a wrong sum on replica(s) {wrong or 'all'}",
            seconds,
        )
    return None, seconds


def _check_consistency(events: Events, tf: Any, setup: Any, gpus: list[int]) -> None:
    import keras
    import numpy as np

    broken, allreduce_s = _allreduce(events, tf, setup)
    if broken:
        events.finding(
            "replica-consistency",
            "fail",
            broken,
            "export NCCL_P2P_DISABLE=1 or train with --cross-device-ops hierarchical, then rerun "
            "`gpudiag check --deep`; see TROUBLESHOOTING.md#wrong-results-across-replicas",
            gpus,
        )
        return
    events.start("replica-consistency", detail=f"one step on 1 and on {setup.num_replicas} replicas")
    n = setup.num_replicas
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32 * n, 8)).astype("float32")
    y = rng.standard_normal((32 * n, 1)).astype("float32")
    weights = [
        rng.standard_normal((8, 16)).astype("float32") * 0.5,
        np.zeros(16, "float32"),
        rng.standard_normal((16, 1)).astype("float32") * 0.5,
        np.zeros(1, "float32"),
    ]
    with tf.device(setup.plan.device_names[0]):
        reference = _one_step(tf, keras, None, weights, x, y)
    off = injected("replica-consistency")
    # the gradient shift that moves each weight by `off` relative to its variable's largest weight
    shift = [off * float(np.max(np.abs(r))) / LEARNING_RATE for r in reference] if off else []
    replicas = _one_step(tf, keras, setup.strategy, weights, x, y, shift)
    worst = 0.0
    for ref, copies in zip(reference, replicas, strict=True):
        for copy in copies:
            worst = max(worst, float(np.max(np.abs(copy - ref)) / max(float(np.max(np.abs(ref))), 1e-12)))
    moved = max(float(np.max(np.abs(r - w))) for r, w in zip(reference, weights, strict=True))
    where = _where(setup)
    if moved == 0.0:
        events.finding(
            "replica-consistency", "fail", "the training step did not change the weights", "", gpus
        )
    elif worst > RELATIVE_TOLERANCE:
        events.finding(
            "replica-consistency",
            "fail",
            f"one step on {n} replicas gives different weights than on one device (relative difference "
            f"{worst:.1e} > {RELATIVE_TOLERANCE:g}) on {where}: the all-reduce or the GPU-to-GPU path "
            "corrupts results",
            "export NCCL_P2P_DISABLE=1 or train with --cross-device-ops hierarchical, then rerun "
            "`gpudiag check --deep`; see TROUBLESHOOTING.md#wrong-results-across-replicas",
            gpus,
        )
    else:
        events.finding(
            "replica-consistency",
            "pass",
            f"one step on {n} replica(s) matches one device (relative difference {worst:.1e}) on {where}; "
            f"an all-reduce of {ALLREDUCE_FLOATS} float32 took {allreduce_s:.2f} s",
            "",
            gpus,
        )


if __name__ == "__main__":
    sys.exit(main())

"""Child process for tests/training/test_multistep.py: training.loop.steps on a tiny Keras model under a
MirroredStrategy of 2 CPU replicas, without the Trainer. Prints one JSON line.

Every scenario builds the same model from the same seed and reads the same unshuffled batches:
- reference: one step per traced call (the hand loop), a host fetch per step;
- k1: the multi-step function called with K=1;
- k5: K=5, chunks cut at the epoch's end (12 steps) and at step checkpoints (--save-freq 7);
- auto: StepsPerExecution("auto");
- nan: batch 10 holds NaNs, and a step whose inputs are not finite has a NaN loss (see
  replica_step); K=4; the chunk must come back short, ending at step 10, with no step run after
  it (the optimizer's step counter says how many ran);
- fault_nan: GPUDIAG_FAULT's nan_at_step=6 with K=4: chunks cut so that the NaN ends one.
Each runs as the trainer's loop does: ChunkRunner.run for a chunk, ChunkRunner.replay
for its per-step logs through a Keras CallbackList.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from training.devices.setup import plan_devices, setup_device_strategy
from training.loop.errors import TrainingDiverged
from training.loop.faults import Faults
from training.loop.state import RunState, ThroughputMeter
from training.loop.steps import ChunkRunner

STEPS_PER_EPOCH, EPOCHS, GLOBAL_BATCH, SAVE_EVERY, NAN_STEP = 12, 2, 16, 7, 10


@dataclass
class Setup:
    """What every scenario shares: the strategy and the unshuffled data."""

    strategy: Any
    x: np.ndarray
    y: np.ndarray


def recorder() -> Any:
    """A Keras callback that records each step's (batch, loss) as the trainer's callbacks see them."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[tuple[int, float]] = []

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.steps.append((batch, float((logs or {})["loss"])))

    return Recorder()


def build(setup: Setup, poison: bool = False) -> tuple:
    """(model, optimizer, distributed iterator, replica step), the same from the same seed."""
    import keras
    import tensorflow as tf

    strategy = setup.strategy
    keras.utils.set_random_seed(0)
    data = setup.x.copy()
    if poison:
        start = (NAN_STEP - 1) * GLOBAL_BATCH
        data[start : start + GLOBAL_BATCH] = np.nan
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
        )
        optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
        optimizer.build(model.trainable_variables)  # slots before tracing: see multistep.py
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        ds = (
            tf.data.Dataset.from_tensor_slices((data, setup.y))
            .repeat()
            .batch(GLOBAL_BATCH, drop_remainder=True)
        )
        iterator = iter(strategy.experimental_distribute_dataset(ds))

    def replica_step(xb, yb):
        # What a layer makes of NaN inputs is the kernel's business: on some CPUs the fused
        # MatMul+BiasAdd+Relu of the traced step turns them into zeros, and the loss stays
        # finite. So the poisoned batch's NaN is put into the loss here, inside the traced
        # step, as a real divergence has it: a NaN loss, and NaN gradients after it. A
        # finite batch multiplies its loss by exactly 1.
        poison = tf.where(tf.reduce_all(tf.math.is_finite(xb)), 1.0, float("nan"))
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = tf.reduce_sum(loss_fn(yb, logits)) / GLOBAL_BATCH * poison
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), yb), tf.float32)
        )
        return tf.stack([loss, correct])

    return model, optimizer, iterator, replica_step


def weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def reference(setup: Setup) -> tuple[list[float], list[np.ndarray]]:
    """One step per traced call, a host fetch per step: every step's loss, and the last weights."""
    import tensorflow as tf

    strategy = setup.strategy
    model, _opt, iterator, replica_step = build(setup)

    @tf.function
    def one_step(it):
        xb, yb = next(it)
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(xb, yb)), axis=None
        )

    losses = [float(one_step(iterator)[0]) for _ in range(STEPS_PER_EPOCH * EPOCHS)]
    return losses, weights(model)


def chunked(
    setup: Setup, setting, poison: bool = False, save_every: int | None = SAVE_EVERY, faults=None
) -> dict:
    """The trainer's loop (Trainer's epoch loop): ChunkRunner.run, then ChunkRunner.replay."""
    import keras

    model, optimizer, iterator, replica_step = build(setup, poison)
    runner = ChunkRunner(setup.strategy, replica_step, setting, GLOBAL_BATCH // 2, faults)
    steps = recorder()
    callbacks = keras.callbacks.CallbackList([steps], model=model)
    run = RunState(ThroughputMeter(GLOBAL_BATCH, warmup_steps=2))
    diverged_at = None
    for epoch in range(EPOCHS):
        run.begin_epoch(epoch)
        logs = None
        while run.step_in_epoch < STEPS_PER_EPOCH and diverged_at is None:
            callbacks.on_train_batch_begin(run.step_in_epoch)  # the chunk's first step, as the trainer does
            rows = runner.run(iterator, run, STEPS_PER_EPOCH, save_every)
            try:
                logs = runner.replay(rows, callbacks, run) or logs
            except TrainingDiverged as exc:
                diverged_at = exc.step
        if diverged_at is None and logs is not None:
            run.end_epoch(logs, stopped_early=False)
    return {
        "chunks": run.calls,
        "logged": steps.steps,
        "weights": weights(model),
        "diverged_at": diverged_at,
        "global_step": run.global_step,
        "steps_run": int(optimizer.iterations.numpy()),
        "meter_steps": run.meter.steps,
        "auto_k": runner.spe.auto.k if runner.spe.auto is not None else None,
    }


def main() -> None:
    strategy = setup_device_strategy(plan_devices(cpu_replicas=2)).strategy
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * 32, 8)).astype(np.float32)
    setup = Setup(strategy, x, rng.integers(0, 3, size=len(x)).astype(np.int32))

    ref_losses, ref_weights = reference(setup)
    out: dict = {"reference_losses": ref_losses}
    for name, setting in (("k1", 1), ("k5", 5), ("auto", "auto")):
        run = chunked(setup, setting)
        out[name] = {
            "chunks": run["chunks"],
            "logged_steps": [s for s, _ in run["logged"]],
            "logged_losses": [v for _, v in run["logged"]],
            "max_weight_diff": max(
                float(np.max(np.abs(a - b))) for a, b in zip(run["weights"], ref_weights, strict=True)
            ),
            "auto_k": run["auto_k"],
        }
    for name, run in (
        ("nan", chunked(setup, 4, poison=True, save_every=None)),
        # GPUDIAG_FAULT's nan_at_step=6 (a NaN reported on the host): the chunk is cut after step 6
        ("fault_nan", chunked(setup, 4, save_every=None, faults=Faults(nan_at_step=6))),
    ):
        out[name] = {
            "chunks": run["chunks"],
            "diverged_at": run["diverged_at"],
            "global_step": run["global_step"],
            "steps_run": run["steps_run"],
            "logged_losses": [v for _, v in run["logged"]],
        }
    out["k5"]["meter_steps"] = chunked(setup, 5)["meter_steps"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # TensorFlow's shutdown with live distributed iterators is slow

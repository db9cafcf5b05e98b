"""Child process for tests/training/test_multistep.py: training.loop.steps on a tiny Keras model under a
MirroredStrategy of 2 CPU replicas, without the Trainer. Prints one JSON line.

Every scenario builds the same model from the same seed and reads the same unshuffled batches:
- reference: one step per traced call (the hand loop), a host fetch per step;
- k1: the multi-step function called with K=1;
- k5: K=5, chunks cut at the epoch's end (12 steps) and at step checkpoints (--save-freq 7);
- auto: StepsPerExecution("auto");
- nan: batch 10 holds a NaN; K=4; the chunk must come back short, ending at step 10, with no
  step run after it (the optimizer's step counter says how many ran);
- fault_nan: GPUDIAG_FAULT's nan_at_step=6 with K=4: chunks cut so that the NaN ends one.
Each runs as the trainer's loop will once wired: ChunkRunner.run for a chunk, ChunkRunner.replay
for its per-step logs through a Keras CallbackList.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from training.devices.setup import plan_devices, setup_device_strategy
from training.loop.errors import TrainingDiverged
from training.loop.faults import Faults
from training.loop.state import EpochSums, ThroughputMeter, TrainResult
from training.loop.steps import ChunkRunner

STEPS_PER_EPOCH, EPOCHS, GLOBAL_BATCH, SAVE_EVERY, NAN_STEP = 12, 2, 16, 7, 10


def main() -> None:
    setup = setup_device_strategy(plan_devices(cpu_replicas=2))
    import keras
    import tensorflow as tf

    strategy = setup.strategy
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * 32, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=len(x)).astype(np.int32)

    class Recorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[tuple[int, float]] = []

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.steps.append((batch, float((logs or {})["loss"])))

    def build(poison: bool = False) -> tuple:
        keras.utils.set_random_seed(0)
        data = x.copy()
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
                tf.data.Dataset.from_tensor_slices((data, y))
                .repeat()
                .batch(GLOBAL_BATCH, drop_remainder=True)
            )
            iterator = iter(strategy.experimental_distribute_dataset(ds))

        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                logits = model(xb, training=True)
                loss = tf.reduce_sum(loss_fn(yb, logits)) / GLOBAL_BATCH
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            correct = tf.reduce_sum(
                tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), yb), tf.float32)
            )
            return tf.stack([loss, correct])

        return model, optimizer, iterator, replica_step

    def weights(model) -> list[np.ndarray]:
        return [np.asarray(w) for w in model.get_weights()]

    def reference() -> tuple[list[float], list[np.ndarray]]:
        model, _opt, iterator, replica_step = build()

        @tf.function
        def one_step(it):
            xb, yb = next(it)
            return strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(xb, yb)), axis=None
            )

        losses = [float(one_step(iterator)[0]) for _ in range(STEPS_PER_EPOCH * EPOCHS)]
        return losses, weights(model)

    def chunked(setting, poison: bool = False, save_every: int | None = SAVE_EVERY, faults=None) -> dict:
        """The trainer's loop as it will run once wired: ChunkRunner.run, then ChunkRunner.replay."""
        model, optimizer, iterator, replica_step = build(poison)
        runner = ChunkRunner(strategy, replica_step, setting, GLOBAL_BATCH // 2, faults)
        recorder = Recorder()
        callbacks = keras.callbacks.CallbackList([recorder], model=model)
        result, meter = TrainResult(), ThroughputMeter(GLOBAL_BATCH, warmup_steps=2)
        chunks: list[int] = []
        diverged_at = None
        for _epoch in range(EPOCHS):
            step, sums = 0, EpochSums(GLOBAL_BATCH)
            while step < STEPS_PER_EPOCH and diverged_at is None:
                callbacks.on_train_batch_begin(step)  # the chunk's first step, as the trainer does
                rows = runner.run(iterator, step, STEPS_PER_EPOCH, result.global_step, save_every, meter)
                chunks.append(len(rows))
                try:
                    _logs, step = runner.replay(rows, step, callbacks, sums, result)
                except TrainingDiverged as exc:
                    diverged_at = exc.step
        return {
            "chunks": chunks,
            "logged": recorder.steps,
            "weights": weights(model),
            "diverged_at": diverged_at,
            "global_step": result.global_step,
            "steps_run": int(optimizer.iterations.numpy()),
            "meter_steps": meter.steps,
            "auto_k": runner.spe.auto.k if runner.spe.auto is not None else None,
        }

    ref_losses, ref_weights = reference()
    out: dict = {"reference_losses": ref_losses}
    for name, setting in (("k1", 1), ("k5", 5), ("auto", "auto")):
        run = chunked(setting)
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
        ("nan", chunked(4, poison=True, save_every=None)),
        # GPUDIAG_FAULT's nan_at_step=6 (a NaN reported on the host): the chunk is cut after step 6
        ("fault_nan", chunked(4, save_every=None, faults=Faults(nan_at_step=6))),
    ):
        out[name] = {
            "chunks": run["chunks"],
            "diverged_at": run["diverged_at"],
            "global_step": run["global_step"],
            "steps_run": run["steps_run"],
            "logged_losses": [v for _, v in run["logged"]],
        }
    out["k5"]["meter_steps"] = chunked(5)["meter_steps"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # TensorFlow's shutdown with live distributed iterators is slow

"""Build, compile and train a Keras model under the strategy with a custom distributed loop.

Why not `model.fit`: in Keras 3.15, `fit` under MirroredStrategy ran at half the speed of a plain
`tf.function` + `strategy.run` loop on the same model and devices, and varied threefold from run
to run (see ARCHITECTURE.md). This loop keeps what users expect of `fit`: the Keras progress bar,
Keras callbacks (TensorBoard, ModelCheckpoint, EarlyStopping, ...), running loss and accuracy,
and a compiled model that `model.save()` writes as usual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training import data as data_mod
from training import models
from training.config import TrainConfig, batch_not_divisible_message
from training.devices import DeviceSetup


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at step {step}: training stopped (lower --learning-rate?)")
        self.step, self.loss = step, loss


@dataclass
class ThroughputMeter:
    """Samples per second over the steps after the first `warmup_steps` (tracing, autotuning)."""

    global_batch_size: int
    warmup_steps: int
    steps: int = 0
    measured_steps: int = 0
    measured_seconds: float = 0.0
    _last: float | None = None

    def step_done(self, now: float) -> None:
        self.steps += 1
        if self.steps > self.warmup_steps and self._last is not None:
            self.measured_steps += 1
            self.measured_seconds += now - self._last
        self._last = now

    def pause(self) -> None:
        """Time between calls to step_done across a pause (epoch end, checkpoint) is not counted."""
        self._last = None

    @property
    def samples_per_sec(self) -> float | None:
        if not self.measured_steps or self.measured_seconds <= 0:
            return None
        return self.measured_steps * self.global_batch_size / self.measured_seconds


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    meter: ThroughputMeter | None = None
    train_seconds: float = 0.0
    stopped_early: bool = False


class Trainer:
    """Model, optimizer and the distributed step for one run on one DeviceSetup."""

    def __init__(self, config: TrainConfig, setup: DeviceSetup, examples: data_mod.Examples) -> None:
        self.config, self.setup, self.examples = config, setup, examples
        self.strategy = setup.strategy
        replicas = setup.num_replicas
        if config.global_batch_size % replicas:
            raise ValueError(batch_not_divisible_message(config.global_batch_size, replicas))
        self.global_batch_size = config.global_batch_size
        self.per_replica_batch_size = config.global_batch_size // replicas
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.model = models.build(config.model, examples.input_shape, examples.num_classes)
            optimizer = make_optimizer(config.optimizer, config.learning_rate)
            if config.mixed_precision:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            # Create the optimizer's slots now: variables first created inside the traced step
            # make tf.function wrap it in an initialisation cond, which fails under
            # MirroredStrategy with 2+ replicas ("You must feed a value for placeholder tensor").
            self.optimizer.build(self.model.trainable_variables)
            # per-example losses: each replica divides by the GLOBAL batch, the optimizer sums
            # the replicas' gradients, so the update is the mean over the global batch
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
            self.model.compile(
                optimizer=self.optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            dataset = data_mod.make_dataset(examples, self.global_batch_size, config.seed)
            self.dist_dataset = data_mod.distribute(self.strategy, dataset)
        self.iterator = iter(self.dist_dataset)
        self.train_step = self._make_train_step()

    # -- the step -------------------------------------------------------------------------------

    def _make_train_step(self) -> Callable[[Any], tf.Tensor]:
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        global_batch = self.global_batch_size
        mixed = self.config.mixed_precision

        def loss_and_grads(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_sum(loss_fn(y, logits)) / global_batch
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss) if mixed else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            correct = tf.reduce_sum(
                tf.cast(
                    tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32)),
                    tf.float32,
                )
            )
            return loss, correct, grads

        if self.config.jit_compile:
            # XLA compiles the replica's forward and backward pass; the all-reduce inside
            # apply_gradients stays outside it, where MirroredStrategy can run it
            loss_and_grads = tf.function(loss_and_grads, jit_compile=True)

        def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            loss, correct, grads = loss_and_grads(x, y)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return tf.stack([loss, correct])

        strategy = self.strategy

        @tf.function
        def train_step(iterator: Any) -> tf.Tensor:
            """One global step; returns [loss, correct predictions] as one tensor: one host fetch."""
            x, y = next(iterator)
            per_replica = strategy.run(replica_step, args=(x, y))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return train_step

    def run_steps(self, steps: int) -> float:
        """Run `steps` training steps without callbacks; returns the last step's loss.

        For the benchmark worker: fetching the loss waits for the devices to finish.
        """
        out = None
        for _ in range(steps):
            out = self.train_step(self.iterator)
        return float(out[0]) if out is not None else float("nan")

    # -- the loop -------------------------------------------------------------------------------

    def fit(
        self,
        epochs: int,
        steps_per_epoch: int,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        verbose: int = 1,
        initial_epoch: int = 0,
    ) -> TrainResult:
        meter = ThroughputMeter(self.global_batch_size, self.config.warmup_steps)
        result = TrainResult(meter=meter)
        cbs = keras.callbacks.CallbackList(
            list(callbacks),
            add_history=True,
            add_progbar=verbose > 0,
            model=self.model,
            verbose=verbose,
            epochs=epochs,
            steps=steps_per_epoch,
        )
        self.model.stop_training = False
        started = time.perf_counter()
        cbs.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            loss_sum = correct_sum = 0.0
            seen = 0
            meter.pause()
            for step in range(steps_per_epoch):
                cbs.on_train_batch_begin(step)
                # one host sync per step, as fit's logs need too
                loss_value, correct = self.train_step(self.iterator).numpy().tolist()
                meter.step_done(time.perf_counter())
                result.steps += 1
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(result.steps, loss_value)
                loss_sum += loss_value
                correct_sum += correct
                seen += self.global_batch_size
                logs = {"loss": loss_sum / (step + 1), "accuracy": correct_sum / seen}
                cbs.on_train_batch_end(step, logs)
                if self.model.stop_training:
                    break
            meter.pause()
            cbs.on_epoch_end(epoch, logs)
            result.history.append({"epoch": epoch + 1, **logs})
            if self.model.stop_training:
                result.stopped_early = True
                break
        cbs.on_train_end(logs)
        result.train_seconds = time.perf_counter() - started
        return result

    def weights(self) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.model.get_weights()]


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if name == "plain-sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}: choose sgd, plain-sgd or adam")


def save_model_atomically(model: keras.Model, path: str) -> None:
    """model.save() to a temporary .keras file beside the target, then rename over it."""
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".keras", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(
    config: TrainConfig,
    setup: DeviceSetup,
    examples: data_mod.Examples,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
) -> dict[str, Any]:
    """Train as configured and return the summary (what --summary-json writes)."""
    started = time.perf_counter()
    trainer = Trainer(config, setup, examples)
    steps_per_epoch = config.steps_per_epoch or max(1, len(examples) // config.global_batch_size)
    all_callbacks = list(callbacks)
    if config.log_dir:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=config.log_dir, update_freq="epoch"))
    setup_seconds = time.perf_counter() - started
    result = trainer.fit(config.epochs, steps_per_epoch, all_callbacks, verbose=verbose)
    if config.save_model:
        save_model_atomically(trainer.model, config.save_model)
    final = result.history[-1] if result.history else {}
    rate = result.meter.samples_per_sec if result.meter else None
    plan = setup.plan
    return {
        "model": config.model,
        "data": examples.source,
        "examples": len(examples),
        "examples_dropped": examples.dropped,
        "device_kind": plan.kind,
        "devices": plan.describe(),
        "replicas": setup.num_replicas,
        "cross_device_ops": setup.cross_device_ops,
        "global_batch_size": trainer.global_batch_size,
        "per_replica_batch_size": trainer.per_replica_batch_size,
        "epochs": len(result.history),
        "steps_per_epoch": steps_per_epoch,
        "steps": result.steps,
        "warmup_steps": config.warmup_steps,
        "learning_rate": config.learning_rate,
        "optimizer": config.optimizer,
        "seed": config.seed,
        "mixed_precision": config.mixed_precision,
        "jit_compile": config.jit_compile,
        "stopped_early": result.stopped_early,
        "final_loss": final.get("loss"),
        "final_accuracy": final.get("accuracy"),
        "history": result.history,
        "samples_per_sec": rate,
        "samples_per_sec_per_replica": rate / setup.num_replicas if rate else None,
        "setup_seconds": setup_seconds,
        "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "warnings": list(setup.warnings),
    }

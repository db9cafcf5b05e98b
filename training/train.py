"""Build, compile and train a Keras model under the strategy with a custom distributed loop.

Why not `model.fit`: in Keras 3.15, `fit` under MirroredStrategy ran at half the speed of a plain
`tf.function` + `strategy.run` loop on the same model and devices, and varied threefold from run
to run (see ARCHITECTURE.md). This loop keeps what users expect of `fit`: the Keras progress bar,
Keras callbacks (TensorBoard, ModelCheckpoint, EarlyStopping, ...), running loss and accuracy,
and a compiled model that `model.save()` writes as usual.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from diagnostics.atomic import replacing
from training import data as data_mod
from training import faults as faults_mod
from training import models
from training.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    Manifest,
    fingerprint,
)
from training.config import (
    TrainConfig,
    batch_not_divisible_message,
    parse_save_freq,
    resolve_steps_per_epoch,
)
from training.devices import DeviceSetup


class TrainingDiverged(RuntimeError):
    """The loss (or, at a checkpoint, a weight) became NaN or infinite."""

    def __init__(
        self,
        step: int,
        loss: float,
        last_checkpoint: str | None = None,
        what: str = "loss",
    ) -> None:
        if last_checkpoint:
            advice = (
                f"; the last good checkpoint, {last_checkpoint}, is kept: lower --learning-rate "
                "and run the same command again to resume from it"
            )
        else:
            advice = " (no checkpoint was kept; lower --learning-rate and run again)"
        super().__init__(f"{what} became {loss} at step {step}: training stopped{advice}")
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: the run stopped after a whole step and, with checkpoints, saved it."""

    def __init__(self, signum: int, global_step: int, checkpoint: str | None, at_once: bool = False) -> None:
        self.signum, self.global_step, self.checkpoint = signum, global_step, checkpoint
        self.at_once = at_once
        name = signal.Signals(signum).name
        if at_once:
            detail = f"stopped at once by a second {name} during global step {global_step + 1}"
            saved = f"; the last checkpoint is {checkpoint}" if checkpoint else ""
        else:
            detail = f"stopped by {name} after global step {global_step}"
            saved = f"; checkpoint {checkpoint} written" if checkpoint else ""
        super().__init__(detail + saved)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal


class _GracefulStop:
    """SIGINT/SIGTERM set a flag that the loop reads after each step; a second signal stops at once.

    Only in the main thread (Python delivers signals there, and `signal.signal` refuses elsewhere).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.global_step = 0
        self.last_checkpoint: str | None = None  # for the message if a second signal cuts it short
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(signum, self.global_step, self.last_checkpoint, at_once=True)
        self.signum = signum
        # os.write, not print: the handler may run while the main thread is inside a print
        os.write(
            2,
            f"\n{signal.Signals(signum).name}: stopping after this step "
            "(send it again to stop at once)\n".encode(),
        )


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
    steps: int = 0  # steps run by this call
    meter: ThroughputMeter | None = None
    train_seconds: float = 0.0
    stopped_early: bool = False
    global_step: int = 0  # steps the model has trained in all, resumed ones included
    last_checkpoint: str | None = None


@dataclass
class StartPoint:
    """Where a resumed run picks up: the position and running sums from a checkpoint's manifest."""

    global_step: int
    epoch: int
    step_in_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    loss_sum: float = 0.0
    correct_sum: float = 0.0
    seen: int = 0
    checkpoint: str | None = None
    stopped_early: bool = False

    @classmethod
    def from_manifest(cls, manifest: Manifest, checkpoint: str | None = None) -> StartPoint:
        return cls(
            manifest.global_step,
            manifest.epoch,
            manifest.step_in_epoch,
            list(manifest.history),
            manifest.loss_sum,
            manifest.correct_sum,
            manifest.seen,
            checkpoint,
            manifest.stopped_early,
        )


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
        # None unless GPUDIAG_FAULT is set (tests); every hook below is skipped then
        self.faults = faults_mod.from_env()

    def seek(self, global_step: int) -> None:
        """Restart the input stream where a run that trained `global_step` steps left it."""
        with self.strategy.scope():
            dataset = data_mod.make_dataset(
                self.examples, self.global_batch_size, self.config.seed, skip_batches=global_step
            )
            self.dist_dataset = data_mod.distribute(self.strategy, dataset)
        self.iterator = iter(self.dist_dataset)

    # -- state for checkpoints ------------------------------------------------------------------

    def _state_variables(self) -> list[Any]:
        # weights (trainable and not: batch-norm statistics) and the optimizer's variables (step
        # count, momentum, loss scale): everything the next step's result depends on
        return [*self.model.weights, *self.optimizer.variables]

    def state(self) -> tuple[list[str], list[np.ndarray]]:
        variables = self._state_variables()
        return [v.path for v in variables], [np.asarray(v.numpy()) for v in variables]

    def restore(self, names: Sequence[str], arrays: Sequence[np.ndarray], source: str) -> None:
        """Assign saved arrays to the model's and optimizer's variables (every replica's copy)."""
        variables = self._state_variables()
        if len(variables) != len(arrays):
            raise CheckpointError(
                f"{source} holds {len(arrays)} variables but this model and optimizer have "
                f"{len(variables)}: it was written by a different model; use another --checkpoint-dir"
            )
        for variable, name, array in zip(variables, names, arrays, strict=True):
            if tuple(variable.shape) != tuple(array.shape):
                raise CheckpointError(
                    f"{source}: {name} has shape {tuple(array.shape)} but this model's {variable.path} "
                    f"has {tuple(variable.shape)}: use another --checkpoint-dir"
                )
        for variable, array in zip(variables, arrays, strict=True):
            if variable.path.endswith("learning_rate"):
                continue  # the rate comes from this run's flags: lowering it after a NaN is a resume
            variable.assign(array)

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
        *,
        checkpoints: CheckpointStore | None = None,
        save_every_steps: int | None = None,
        start: StartPoint | None = None,
        handle_signals: bool = False,
        fingerprint_: dict[str, Any] | None = None,
    ) -> TrainResult:
        """Train from `start` (a checkpoint's position; call seek() and restore() first) or from
        `initial_epoch`. With `checkpoints`, save at the end of each epoch, or every
        `save_every_steps` steps, at the end, and on SIGINT/SIGTERM (with `handle_signals`)."""
        meter = ThroughputMeter(self.global_batch_size, self.config.warmup_steps)
        result = TrainResult(meter=meter)
        if start is None:
            start = StartPoint(initial_epoch * steps_per_epoch, initial_epoch, 0)
        result.history = list(start.history)
        result.global_step = start.global_step
        result.last_checkpoint = start.checkpoint
        cbs = keras.callbacks.CallbackList(
            list(callbacks),
            add_history=True,
            add_progbar=verbose > 0,
            model=self.model,
            verbose=verbose,
            epochs=epochs,
            steps=steps_per_epoch,
        )
        faults = self.faults
        stop = _GracefulStop() if handle_signals else None
        if stop is not None:
            stop.global_step, stop.last_checkpoint = start.global_step, start.checkpoint
        per_replica = self.per_replica_batch_size

        def save(epoch_done: int, step_in_epoch: int, sums: tuple[float, float, int]) -> None:
            assert checkpoints is not None
            names, arrays = self.state()
            for name, array in zip(names, arrays, strict=True):
                if not np.isfinite(array).all():
                    # a loss is computed before its step's update: the update itself can overflow
                    raise TrainingDiverged(result.global_step, float("nan"), result.last_checkpoint, name)
            manifest = Manifest(
                global_step=result.global_step,
                epoch=epoch_done,
                step_in_epoch=step_in_epoch,
                fingerprint=dict(fingerprint_ or {}),
                history=list(result.history),
                loss_sum=sums[0],
                correct_sum=sums[1],
                seen=sums[2],
                replicas=int(self.strategy.num_replicas_in_sync),
                stopped_early=result.stopped_early,
            )
            result.last_checkpoint = checkpoints.save(manifest, names, arrays).name
            if stop is not None:
                stop.last_checkpoint = result.last_checkpoint
            meter.pause()  # the write is not training time

        def after_step() -> None:
            if faults is not None:
                faults.after_step(result.global_step)
            if stop is not None and stop.signum is not None:
                raise TrainingInterrupted(stop.signum, result.global_step, result.last_checkpoint)

        self.model.stop_training = False
        started = time.perf_counter()
        logs: dict[str, float] = {}
        with stop or contextlib.nullcontext():
            cbs.on_train_begin()
            first_epoch = epochs if start.stopped_early else start.epoch
            for epoch in range(first_epoch, epochs):
                cbs.on_epoch_begin(epoch)
                resumed_here = epoch == start.epoch and start.step_in_epoch > 0
                loss_sum, correct_sum, seen = (
                    (start.loss_sum, start.correct_sum, start.seen) if resumed_here else (0.0, 0.0, 0)
                )
                meter.pause()
                for step in range(start.step_in_epoch if resumed_here else 0, steps_per_epoch):
                    cbs.on_train_batch_begin(step)
                    if faults is not None:
                        faults.before_step(result.global_step + 1, per_replica)
                    # one host sync per step, as fit's logs need too
                    loss_value, correct = self.train_step(self.iterator).numpy().tolist()
                    meter.step_done(time.perf_counter())
                    result.steps += 1
                    result.global_step += 1
                    if stop is not None:
                        stop.global_step = result.global_step
                    if faults is not None:
                        loss_value = faults.loss_after_step(result.global_step, loss_value)
                    if not math.isfinite(loss_value):
                        # no checkpoint of these weights: the last good one stays the newest
                        raise TrainingDiverged(result.global_step, loss_value, result.last_checkpoint)
                    loss_sum += loss_value
                    correct_sum += correct
                    seen += self.global_batch_size
                    steps_seen = seen // self.global_batch_size
                    logs = {"loss": loss_sum / steps_seen, "accuracy": correct_sum / seen}
                    cbs.on_train_batch_end(step, logs)
                    if step + 1 < steps_per_epoch and not self.model.stop_training:
                        stopping = stop is not None and stop.signum is not None
                        due = save_every_steps is not None and result.global_step % save_every_steps == 0
                        if checkpoints is not None and (stopping or due):
                            save(epoch, step + 1, (loss_sum, correct_sum, seen))
                        after_step()
                    if self.model.stop_training:
                        break
                meter.pause()
                cbs.on_epoch_end(epoch, logs)
                result.history.append({"epoch": epoch + 1, **logs})
                result.stopped_early = bool(self.model.stop_training)
                if checkpoints is not None:
                    last = epoch + 1 == epochs or result.stopped_early
                    stopping = stop is not None and stop.signum is not None
                    due = save_every_steps is None or result.global_step % save_every_steps == 0
                    if last or stopping or due:
                        save(epoch + 1, 0, (0.0, 0.0, 0))
                after_step()
                if result.stopped_early:
                    break
            cbs.on_train_end(logs)
        result.train_seconds = time.perf_counter() - started
        return result

    def probe(self, steps: int = 2) -> None:
        """Run a few steps and wait for them (for --auto-batch-size): raises ResourceExhaustedError
        if this batch does not fit. The first step traces and allocates; the second reuses."""
        for step in range(steps):
            if self.faults is not None:
                self.faults.before_step(step + 1, self.per_replica_batch_size)
            self.train_step(self.iterator).numpy()

    def weights(self) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.model.get_weights()]


def check_fingerprint(checkpoint: Checkpoint, current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written under settings that change what training means."""
    from training.checkpoint import describe_mismatch

    diff = describe_mismatch(checkpoint.manifest.fingerprint, current)
    if diff:
        raise CheckpointError(
            f"--checkpoint-dir {checkpoint.manifest_path.parent} holds a different run ({diff}): "
            "resume with the same settings, or use another --checkpoint-dir"
        )


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
    with replacing(path, suffix=".keras") as tmp:
        model.save(tmp)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    config: TrainConfig,
    setup: DeviceSetup,
    examples: data_mod.Examples,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
    notify: Callable[[str], None] = _to_stderr,
) -> dict[str, Any]:
    """Train as configured and return the summary (what --summary-json writes).

    With config.checkpoint_dir: resume from the newest good checkpoint there (and say so through
    `notify`), save as --save-freq asks, and on SIGINT/SIGTERM save and raise TrainingInterrupted.
    """
    started = time.perf_counter()
    trainer = Trainer(config, setup, examples)
    steps_per_epoch = resolve_steps_per_epoch(config, len(examples))
    all_callbacks = list(callbacks)
    if config.log_dir:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=config.log_dir, update_freq="epoch"))
    store, start, resumed = None, None, None
    current = fingerprint(config, len(examples), steps_per_epoch)
    if config.checkpoint_dir:
        store = CheckpointStore(config.checkpoint_dir, faults=trainer.faults)
        restored = store.restore_latest(notify)
        if restored is not None:
            check_fingerprint(restored.checkpoint, current)
            manifest = restored.manifest
            trainer.restore([n for n, _ in manifest.variables], restored.arrays, restored.checkpoint.name)
            trainer.seek(manifest.global_step)
            start = StartPoint.from_manifest(manifest, restored.checkpoint.name)
            resumed = restored.checkpoint.name
            note = ""
            if manifest.replicas != setup.num_replicas:
                note = f" (written on {manifest.replicas} replicas, now {setup.num_replicas})"
            notify(f"resuming from checkpoint {resumed} ({manifest.where()}){note}")
            if manifest.stopped_early or manifest.epoch >= config.epochs:
                notify(f"that checkpoint ends the run: nothing left to train for --epochs {config.epochs}")
    setup_seconds = time.perf_counter() - started
    result = trainer.fit(
        config.epochs,
        steps_per_epoch,
        all_callbacks,
        verbose=verbose,
        checkpoints=store,
        save_every_steps=parse_save_freq(config.save_freq),
        start=start,
        handle_signals=True,
        fingerprint_=current,
    )
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
        "steps": result.global_step,
        "steps_this_run": result.steps,
        "resumed_from": resumed,
        "checkpoint_dir": config.checkpoint_dir,
        "last_checkpoint": result.last_checkpoint,
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

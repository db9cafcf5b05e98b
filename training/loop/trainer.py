"""Build, compile and train a Keras model under the strategy with a custom distributed loop.

Why not `model.fit`: in Keras 3.15, `fit` under MirroredStrategy ran at half the speed of a plain
`tf.function` + `strategy.run` loop on the same model and devices, and varied threefold from run
to run (see ARCHITECTURE.md). This loop keeps what users expect of `fit`: the Keras progress bar,
Keras callbacks (TensorBoard, ModelCheckpoint, EarlyStopping, ...), running loss and accuracy,
and a compiled model that `model.save()` writes as usual.

The loop's other concerns have modules of their own: progress.py (position, running sums,
throughput), checkpointing.py (when to save, resuming), signals.py (SIGINT/SIGTERM), errors.py
(how a run ends early), optimizers.py (the optimizer and its learning-rate schedule), evaluate.py
(validation after each epoch) and summary.py (the summary dict).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common.files import replacing
from training.app import usage
from training.app.summary import build_summary
from training.checkpoints.resume import StartPoint, resume_latest
from training.checkpoints.saving import Checkpointing
from training.checkpoints.store import CheckpointError, CheckpointStore, fingerprint
from training.devices import multiworker
from training.devices.setup import DeviceSetup
from training.inputs import data as data_mod
from training.inputs import models
from training.loop import faults as faults_mod
from training.loop.errors import TrainingDiverged, TrainingInterrupted
from training.loop.evaluate import VAL_PREFIX, Evaluator
from training.loop.optimizers import build_optimizer, make_optimizer
from training.loop.signals import GracefulStop
from training.loop.state import ThroughputMeter, TrainResult
from training.loop.steps import ChunkRunner, StepsPerExecution, run_steps
from training.settings.config import (
    TrainConfig,
    batch_not_divisible_message,
    parse_save_freq,
    resolve_steps_per_epoch,
)

# what other modules import from here; the run's records and exceptions live in their own modules
__all__ = [
    "StartPoint",
    "ThroughputMeter",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "make_optimizer",
    "run",
    "save_model_atomically",
]


class Trainer:
    """Model, optimizer and the distributed step for one run on one DeviceSetup."""

    def __init__(
        self,
        config: TrainConfig,
        setup: DeviceSetup,
        examples: data_mod.Examples,
        validation: data_mod.Examples | None = None,
    ) -> None:
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
            # the warm-up is counted in steps: as many per epoch as run() will train
            self.optimizer = build_optimizer(config, resolve_steps_per_epoch(config, len(examples)))
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
        self.evaluator = (
            Evaluator(self.strategy, self.model, validation, self.global_batch_size)
            if validation is not None
            else None
        )
        # None unless GPUDIAG_FAULT is set (tests); every hook below is skipped then
        self.faults = faults_mod.from_env()
        self.agreement = (
            multiworker.Agreement(self.strategy, setup.is_chief, setup.plan.num_replicas)
            if setup.cluster is not None
            else None
        )
        self.chunks = ChunkRunner(
            self.strategy,
            self._replica_step,
            config.steps_per_execution,
            self.per_replica_batch_size,
            self.faults,
        )

    @property
    def num_replicas(self) -> int:
        return int(self.setup.num_replicas)

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

        self._replica_step = replica_step  # what the several-steps-per-call loop runs
        strategy = self.strategy

        @tf.function
        def train_step(iterator: Any) -> tf.Tensor:
            """One global step; returns [loss, correct predictions] as one tensor: one host fetch."""
            x, y = next(iterator)
            per_replica = strategy.run(replica_step, args=(x, y))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return train_step

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
        if start is None:
            start = StartPoint(initial_epoch * steps_per_epoch, initial_epoch, 0)
        meter = ThroughputMeter(self.global_batch_size, self.config.warmup_steps)
        result = start.result(meter)
        cbs = self._callback_list(callbacks, verbose, epochs, steps_per_epoch)
        saving = Checkpointing(
            checkpoints,
            result,
            meter,
            state=self.state,
            replicas=int(self.strategy.num_replicas_in_sync),
            every_steps=save_every_steps,
            fingerprint=fingerprint_,
        )
        stop = GracefulStop(lambda: (result.global_step, result.last_checkpoint), install=handle_signals)
        self.model.stop_training = False
        started = time.perf_counter()
        logs: dict[str, float] = {}
        with stop:
            cbs.on_train_begin()
            for epoch in range(epochs if start.stopped_early else start.epoch, epochs):
                cbs.on_epoch_begin(epoch)
                first_step, sums = start.enter_epoch(epoch, self.global_batch_size)
                meter.pause()
                step = first_step
                while step < steps_per_epoch:
                    # one traced call of several steps, then each step's logs to the callbacks; the
                    # first step's begin comes before the call, as in Keras' steps_per_execution
                    cbs.on_train_batch_begin(step)
                    rows = self.chunks.run(
                        self.iterator, step, steps_per_epoch, result.global_step, save_every_steps, meter
                    )
                    chunk_logs, step = self.chunks.replay(rows, step, cbs, sums, result)
                    logs = chunk_logs or logs
                    if self.agreement is not None:  # several workers: stop and K the same on all
                        any_stop, self.chunks.spe.agreed = self.agreement(
                            stop.pending, self.chunks.spe.proposed()
                        )
                        stop.settle(any_stop)
                    if self.model.stop_training:
                        break
                    # an epoch's last step is saved (and checked for a signal) at the epoch's end
                    if step < steps_per_epoch:
                        saving.mid_epoch(epoch, step, sums, stopping=stop.requested)
                        self._after_step(result, stop)
                meter.pause()
                if self.evaluator is not None:
                    logs = {**logs, **self._validate(cbs, result)}
                cbs.on_epoch_end(epoch, logs)
                result.history.append({"epoch": epoch + 1, **logs})
                result.stopped_early = bool(self.model.stop_training)
                final = epoch + 1 == epochs or result.stopped_early
                saving.epoch_end(epoch + 1, final, stopping=stop.requested)
                self._after_step(result, stop)
                if result.stopped_early:
                    break
            cbs.on_train_end(logs)
        result.train_seconds = time.perf_counter() - started
        return result

    def _callback_list(
        self, callbacks: Sequence[keras.callbacks.Callback], verbose: int, epochs: int, steps: int
    ) -> keras.callbacks.CallbackList:
        # add_progbar: the same Keras progress bar that model.fit prints
        return keras.callbacks.CallbackList(
            list(callbacks),
            add_history=True,
            add_progbar=verbose > 0,
            model=self.model,
            verbose=verbose,
            epochs=epochs,
            steps=steps,
        )

    def _validate(self, cbs: keras.callbacks.CallbackList, result: TrainResult) -> dict[str, float]:
        """The validation figures after an epoch, as fit's logs name them (val_loss, val_accuracy);
        Keras' on_test_* hooks run as in fit, TensorBoard writing them to its validation folder."""
        assert self.evaluator is not None
        started = time.perf_counter()
        cbs.on_test_begin()
        figures = self.evaluator.evaluate(cbs.on_test_batch_begin, cbs.on_test_batch_end)
        cbs.on_test_end(figures)
        result.validation_seconds += time.perf_counter() - started
        return {f"{VAL_PREFIX}{name}": value for name, value in figures.items()}

    def _after_step(self, result: TrainResult, stop: GracefulStop) -> None:
        """After a step and any checkpoint written for it: where a kill or a signal stops the run."""
        if self.faults is not None:
            self.faults.after_step(result.global_step)
        stop.raise_if_requested(result.global_step, result.last_checkpoint)

    def run_steps(self, steps: int, schedule: StepsPerExecution | None = None) -> tuple[float, int]:
        """`steps` training steps with no callbacks, in traced calls of `schedule`'s K (default: this
        trainer's own `--steps-per-execution`), each ending on its host fetch: what the benchmark
        worker and bench/ time. Returns the last loss and the number of calls."""
        return run_steps(self.chunks.multi_step, self.iterator, steps, schedule or self.chunks.spe)

    @property
    def steps_per_execution(self) -> str:
        """'auto (K=17 last)' or '20': what the summary reports."""
        return self.chunks.spe.describe()

    def probe(self, steps: int = 2) -> None:
        """Run a few steps and wait for them (for --auto-batch-size): raises ResourceExhaustedError
        if this batch does not fit. The first step traces and allocates; the second reuses."""
        for step in range(steps):
            if self.faults is not None:
                self.faults.before_step(step + 1, self.per_replica_batch_size)
            self.train_step(self.iterator).numpy()

    def weights(self) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.model.get_weights()]


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
    validation: data_mod.Examples | None = None,
) -> dict[str, Any]:
    """Train as configured and return the summary (what --summary-json writes).

    With config.checkpoint_dir: resume from the newest good checkpoint there (and say so through
    `notify`), save as --save-freq asks, and on SIGINT/SIGTERM save and raise TrainingInterrupted.
    With `validation` (held out by training.inputs.validation), evaluate on it after each epoch.
    """
    started = time.perf_counter()
    trainer = Trainer(config, setup, examples, validation)
    steps_per_epoch = resolve_steps_per_epoch(config, len(examples))
    all_callbacks = list(callbacks)
    chief = setup.is_chief  # on several workers only the chief writes what the user sees
    if config.log_dir and chief:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=config.log_dir, update_freq="epoch"))
    current = fingerprint(config, len(examples), steps_per_epoch)
    store, start = None, None
    if config.checkpoint_dir:
        store = CheckpointStore(config.checkpoint_dir, faults=trainer.faults)
        # every worker resumes from the chief's checkpoints (storage they all see); only the chief writes
        start = resume_latest(store, trainer, current, config.epochs, notify)
        store = store if chief else None
    setup_seconds = time.perf_counter() - started
    watched_gpus = [g.index for g in setup.plan.gpus] if setup.plan.kind == "gpu" else []
    with usage.sampler(watched_gpus) as watching:
        watching.active = True
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
    if config.save_model and chief:
        save_model_atomically(trainer.model, config.save_model)
    return build_summary(
        config,
        setup,
        examples,
        result,
        validation=validation,
        global_batch_size=trainer.global_batch_size,
        per_replica_batch_size=trainer.per_replica_batch_size,
        steps_per_epoch=steps_per_epoch,
        resumed_from=start.checkpoint if start is not None else None,
        setup_seconds=setup_seconds,
        wall_seconds=time.perf_counter() - started,
        steps_per_execution=trainer.steps_per_execution,
        first_call=trainer.chunks.first_call,
        gpu_usage=usage.summarize(watching),
    )

"""Build, compile and train a Keras model under the strategy with a custom distributed loop.

Why not `model.fit`: in Keras 3.15, `fit` under MirroredStrategy ran slower than a plain
`tf.function` + `strategy.run` loop on the same model and devices, and varied from run to run
(bench/test_trainer_speed.py measures both). This loop keeps what users expect of `fit`: the Keras
progress bar, Keras callbacks (TensorBoard, ModelCheckpoint, EarlyStopping, ...), running loss and
accuracy, and a compiled model that `model.save()` writes as usual.

The loop's other concerns have modules of their own: state.py (`RunState`: position, running
sums, throughput, stop requests), steps.py (several steps per traced call), signals.py
(SIGINT/SIGTERM), errors.py (how a run ends early), optimizers.py (the optimizer and its
learning-rate schedule), evaluate.py (validation after each epoch); checkpoints/ (when to save,
resuming). The run around the loop is training.app.run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.checkpoints.saving import Checkpointing
from training.checkpoints.store import CheckpointError, CheckpointStore
from training.devices import multiworker
from training.devices.setup import DeviceSetup
from training.inputs import data as data_mod
from training.inputs import models
from training.loop import faults as faults_mod
from training.loop.evaluate import VAL_PREFIX, Evaluator, _outputs_probabilities
from training.loop.optimizers import build_optimizer
from training.loop.signals import GracefulStop
from training.loop.state import RunState, ThroughputMeter
from training.loop.steps import ChunkRunner, ProfileRange, StepsPerExecution, run_steps
from training.settings.batch import per_replica_batch
from training.settings.config import TrainConfig, resolve_steps_per_epoch


class Trainer:
    """Model, optimizer and the distributed step for one run on one DeviceSetup."""

    def __init__(
        self,
        config: TrainConfig,
        setup: DeviceSetup,
        examples: data_mod.DataSource,
        validation: data_mod.DataSource | None = None,
    ) -> None:
        self.config, self.setup, self.examples = config, setup, examples
        self.strategy = setup.strategy
        self.global_batch_size = config.global_batch_size
        self.per_replica_batch_size = per_replica_batch(
            config.global_batch_size, setup.num_replicas, config.accumulate_steps
        )
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.model = models.build(
                config.model, examples.input_shape, examples.num_classes, config.custom_objects
            )
            # a user's model may end in a softmax: the loss takes what it outputs
            from_logits = not _outputs_probabilities(self.model)
            # the warm-up is counted in steps: as many per epoch as run() will train
            self.optimizer = build_optimizer(config, resolve_steps_per_epoch(config, len(examples)))
            # Create the optimizer's slots now: variables first created inside the traced step
            # make tf.function wrap it in an initialisation cond, which fails under
            # MirroredStrategy with 2+ replicas ("You must feed a value for placeholder tensor").
            self.optimizer.build(self.model.trainable_variables)
            # per-example losses: each replica divides by the GLOBAL batch, the optimizer sums
            # the replicas' gradients, so the update is the mean over the global batch
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, reduction=None)
            self.model.compile(
                optimizer=self.optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                metrics=["accuracy"],
            )
            dataset = data_mod.make_dataset(examples, self.global_batch_size, config.seed)
            self.dist_dataset = data_mod.distribute(self.strategy, dataset)
        self.iterator = iter(self.dist_dataset)
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
            self._make_replica_step(),
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

    def _make_replica_step(self) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """One replica's share of a step, the one place the step is built: forward, loss over the
        GLOBAL batch, gradients, update; returns [loss, correct predictions]. The traced loop of
        steps.py runs it under `strategy.run`, K steps per call.

        With --accumulate-steps M, the replica's batch is cut into M micro-batches, in order, run
        one after the other (a while loop: only one micro-batch's activations live at a time); each
        loss is still divided by the GLOBAL batch, so their gradients' sum is the whole batch's
        gradient, and apply_gradients all-reduces it once, as without accumulation."""
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        global_batch = self.global_batch_size
        mixed = self.config.mixed_precision
        micro_batches = self.config.accumulate_steps

        def loss_and_grads(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_sum(loss_fn(y, logits)) / global_batch
                if model.losses:  # once per step: a 1/M share in each of M micro-batches
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses)) / micro_batches
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

        def accumulated(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
            def split(t: tf.Tensor) -> tf.Tensor:  # [M, batch / M, ...], the micro-batches in order
                return tf.reshape(t, tf.concat([[micro_batches, -1], tf.shape(t)[1:]], axis=0))

            xs, ys = split(x), split(y)

            def body(i: tf.Tensor, loss: tf.Tensor, correct: tf.Tensor, grads: list[tf.Tensor]) -> Any:
                part_loss, part_correct, part_grads = loss_and_grads(xs[i], ys[i])
                summed = [g + p for g, p in zip(grads, part_grads, strict=True)]
                return i + 1, loss + part_loss, correct + part_correct, summed

            zeros = [tf.zeros(v.shape, v.dtype) for v in model.trainable_variables]
            start = (tf.constant(0), tf.constant(0.0), tf.constant(0.0), zeros)
            _, loss, correct, grads = tf.while_loop(lambda i, *_: i < micro_batches, body, start)
            return loss, correct, grads

        step_grads = accumulated if micro_batches > 1 else loss_and_grads

        def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            loss, correct, grads = step_grads(x, y)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return tf.stack([loss, correct])

        return replica_step

    # -- the loop -------------------------------------------------------------------------------

    def new_state(self) -> RunState:
        """A run at its start: what fit goes on from, unless a checkpoint's (checkpoints.resume)."""
        return RunState(ThroughputMeter(self.global_batch_size, self.config.warmup_steps))

    def fit(
        self,
        epochs: int,
        steps_per_epoch: int,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        verbose: int = 1,
        *,
        state: RunState | None = None,
        checkpoints: CheckpointStore | None = None,
        save_every_steps: int | None = None,
        handle_signals: bool = False,
        fingerprint: dict[str, Any] | None = None,
        profile: ProfileRange | None = None,
    ) -> RunState:
        """Train from where `state` stands (a resumed run's: call seek() and restore() first), or
        from the start. With `checkpoints`, save at the end of each epoch, or every
        `save_every_steps` steps, at the end, and on SIGINT/SIGTERM (with `handle_signals`). With
        `profile`, a TensorBoard profile of its steps, which the throughput leaves out.
        Returns the state, which also holds where a run that raised stopped."""
        run = state if state is not None else self.new_state()
        cbs = self._callback_list(callbacks, verbose, epochs, steps_per_epoch)
        saving = Checkpointing(
            checkpoints,
            run,
            state=self.state,
            replicas=int(self.strategy.num_replicas_in_sync),
            every_steps=save_every_steps,
            fingerprint=fingerprint,
        )
        stop = GracefulStop(run, install=handle_signals)
        self.model.stop_training = False
        self.chunks.profile = profile
        started = time.perf_counter()
        try:
            with stop:
                cbs.on_train_begin()
                logs: dict[str, float] = {}
                for epoch in range(run.first_epoch(epochs), epochs):
                    logs = self._epoch(epoch, steps_per_epoch, run, cbs, saving, stop)
                    final = epoch + 1 == epochs or run.stopped_early
                    saving.epoch_end(final)
                    self._after_step(run)
                    if run.stopped_early:
                        break
                cbs.on_train_end(logs)
        finally:  # a run that ends inside the range (a stop, a NaN) still closes its profile
            if profile is not None:
                profile.stop()
        run.train_seconds = time.perf_counter() - started
        return run

    def _epoch(
        self,
        epoch: int,
        steps_per_epoch: int,
        run: RunState,
        cbs: keras.callbacks.CallbackList,
        saving: Checkpointing,
        stop: GracefulStop,
    ) -> dict[str, float]:
        """One epoch's steps, chunk by chunk, then validation; returns the epoch's logs."""
        run.begin_epoch(epoch)
        cbs.on_epoch_begin(epoch)
        run.meter.pause()
        logs: dict[str, float] = {}
        while run.step_in_epoch < steps_per_epoch:
            # one traced call of several steps, then each step's logs to the callbacks; the
            # first step's begin comes before the call, as in Keras' steps_per_execution
            cbs.on_train_batch_begin(run.step_in_epoch)
            rows = self.chunks.run(self.iterator, run, steps_per_epoch, saving.every_steps)
            logs = self.chunks.replay(rows, cbs, run) or logs
            if self.agreement is not None:  # several workers: stop and K the same on all
                any_stop, self.chunks.spe.agreed = self.agreement(stop.pending, self.chunks.spe.proposed())
                stop.settle(any_stop)
            if self.model.stop_training:
                break
            # an epoch's last step is saved (and checked for a signal) at the epoch's end
            if run.step_in_epoch < steps_per_epoch:
                saving.mid_epoch()
                self._after_step(run)
        run.meter.pause()
        if self.evaluator is not None:
            logs = {**logs, **self._validate(cbs, run)}
        cbs.on_epoch_end(epoch, logs)
        run.end_epoch(logs, stopped_early=bool(self.model.stop_training))
        return logs

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

    def _validate(self, cbs: keras.callbacks.CallbackList, run: RunState) -> dict[str, float]:
        """The validation figures after an epoch, as fit's logs name them (val_loss, val_accuracy);
        Keras' on_test_* hooks run as in fit, TensorBoard writing them to its validation folder."""
        assert self.evaluator is not None
        started = time.perf_counter()
        cbs.on_test_begin()
        figures = self.evaluator.evaluate(cbs.on_test_batch_begin, cbs.on_test_batch_end)
        cbs.on_test_end(figures)
        run.validation_seconds += time.perf_counter() - started
        return {f"{VAL_PREFIX}{name}": value for name, value in figures.items()}

    def _after_step(self, run: RunState) -> None:
        """After a step and any checkpoint written for it: where a kill or a signal stops the run."""
        if self.faults is not None:
            self.faults.after_step(run.global_step)
        run.raise_if_stop_requested()

    def run_steps(self, steps: int, schedule: StepsPerExecution | None = None) -> tuple[float, int]:
        """`steps` training steps with no callbacks, in traced calls of `schedule`'s K (default: this
        trainer's own `--steps-per-execution`), each ending on its host fetch: what the benchmark
        worker and bench/ time. Returns the last loss and the number of calls."""
        return run_steps(
            self.chunks.multi_step, self.iterator, steps, schedule or self.chunks.spe, self.agreement
        )

    @property
    def steps_per_execution(self) -> str:
        """'auto (K=17 last)' or '20': what the summary reports."""
        return self.chunks.spe.describe()

    def probe(self, steps: int = 2) -> None:
        """Run a few steps and wait for them (for --auto-batch-size): raises ResourceExhaustedError
        if this batch does not fit. The first step traces and allocates; the second reuses."""
        one_step = StepsPerExecution(1)
        for step in range(steps):
            if self.faults is not None:
                self.faults.before_step(step + 1, self.per_replica_batch_size)
            self.run_steps(1, one_step)

    def weights(self) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.model.get_weights()]

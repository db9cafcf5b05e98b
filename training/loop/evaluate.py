"""Evaluation under the strategy: the loss and accuracy of a model over a finite data set, after
each epoch (--validation-split, --validation-data) and for `python -m training evaluate MODEL.keras`.

Each replica sums its examples' losses and correct predictions, the sums are added across
replicas, and the totals are divided by the number of examples. Every example counts exactly
once, on any replica count: the last global batch is padded to full size with copies of weight
0 (training/inputs/data.py, make_eval_dataset), so that every replica gets the same non-empty
share (a replica with an empty batch fails on some machines), and a padded copy adds exactly 0
to each sum and to the example count. So the result does not depend on how the examples are
spread: 1, 2 and 4 replicas give the same numbers (a test checks). The sums are float64: float32
sums in another order would differ in the last digits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.devices.setup import DeviceSetup
from training.inputs import data as data_mod
from training.inputs import user_model
from training.inputs.models import ModelError
from training.settings.config import TrainConfig

VAL_PREFIX = "val_"


class Evaluator:
    """Evaluates `model` on `examples` in global batches of `global_batch_size` under `strategy`."""

    def __init__(
        self, strategy: Any, model: keras.Model, examples: data_mod.DataSource, global_batch_size: int
    ):
        self.strategy, self.model, self.examples = strategy, model, examples
        if global_batch_size % strategy.num_replicas_in_sync:
            # the callers check this first, with a user's message; full batches are an even split
            # only if it holds
            raise ValueError(
                f"global batch {global_batch_size} is not a multiple of "
                f"{strategy.num_replicas_in_sync} replicas"
            )
        self.batches = math.ceil(len(examples) / global_batch_size)
        dataset = data_mod.make_eval_dataset(examples, global_batch_size)
        self.dist_dataset = data_mod.distribute(strategy, dataset)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=not _outputs_probabilities(model), reduction=None
        )

        def replica_sums(x: tf.Tensor, y: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
            outputs = model(x, training=False)
            y = tf.cast(y, tf.int32)
            predicted = tf.argmax(outputs, axis=-1, output_type=tf.int32)
            # A padded copy (weight 0) is selected out, not multiplied by 0: 0 x inf is NaN. So
            # it adds exactly 0 to the loss and the correct predictions, and the example count
            # is the sum of the weights, the number of real examples: the means are theirs alone.
            counted = weight > 0
            zero = tf.zeros_like(weight, tf.float64)
            losses = tf.where(counted, tf.cast(loss_fn(y, outputs), tf.float64), zero)
            correct = tf.where(counted, tf.cast(tf.equal(predicted, y), tf.float64), zero)
            return tf.stack(
                [
                    tf.reduce_sum(losses),
                    tf.reduce_sum(correct),
                    tf.reduce_sum(tf.cast(counted, tf.float64)),
                ]
            )

        @tf.function
        def step(iterator: Any) -> tf.Tensor:
            """[loss sum, correct predictions, examples] of one global batch, over all replicas."""
            x, y, weight = next(iterator)
            per_replica = strategy.run(replica_sums, args=(x, y, weight))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        self.step = step

    def evaluate(
        self,
        on_batch_begin: Callable[[int], None] | None = None,
        on_batch_end: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """{"loss": mean loss per example, "accuracy": fraction correct}; the callbacks get the
        running figures after each batch (for a progress bar and Keras' on_test_batch_* hooks)."""
        iterator = iter(self.dist_dataset)
        totals = np.zeros(3, np.float64)
        logs: dict[str, float] = {}
        # weight regularisation is part of the loss, as in training (none in the built-in models)
        regularization = float(sum(float(v) for v in self.model.losses)) if self.model.losses else 0.0
        for batch in range(self.batches):
            if on_batch_begin is not None:
                on_batch_begin(batch)
            totals += self.step(iterator).numpy()
            logs = {"loss": totals[0] / totals[2] + regularization, "accuracy": totals[1] / totals[2]}
            if on_batch_end is not None:
                on_batch_end(batch, logs)
        return {k: float(v) for k, v in logs.items()}


def _outputs_probabilities(model: keras.Model) -> bool:
    """Whether the last layer ends in a softmax (a model from elsewhere); the trainer's output logits."""
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return activation is keras.activations.softmax


def load_model(path: str, strategy: Any, custom_objects: str | None = None) -> keras.Model:
    """A saved .keras model, its variables on the strategy's devices; unreadable is bad input, and
    a custom class that no --custom-objects defines is named in the line."""
    user_model.import_custom_objects(custom_objects)
    with strategy.scope():
        # the optimizer is not needed to evaluate, and not building it saves its variables
        return user_model.load_saved(path, f"evaluate {path}")


def check_fits(model: keras.Model, examples: data_mod.DataSource, path: str) -> None:
    """The data must have the model's input shape and no more classes than it has outputs."""
    inputs, outputs = model.input_shape, model.output_shape
    if isinstance(inputs, list) or isinstance(outputs, list):
        raise ModelError(f"evaluate {path}: a model with several inputs or outputs is not a classifier")
    expected, got = tuple(inputs[1:]), examples.input_shape
    if len(expected) != len(got) or any(d not in (None, g) for d, g in zip(expected, got, strict=True)):
        raise ModelError(
            f"evaluate {path}: the model takes inputs of shape {expected}, "
            f"but {examples.source} has examples of shape {got}"
        )
    if outputs[-1] is None or outputs[-1] < examples.num_classes:
        raise ModelError(
            f"evaluate {path}: the model has {outputs[-1]} outputs, but {examples.source} has "
            f"{examples.num_classes} classes"
        )


def run(
    model_path: str, config: TrainConfig, setup: DeviceSetup, examples: data_mod.DataSource, verbose: int = 1
) -> dict[str, Any]:
    """Evaluate a saved model on `examples`; returns the summary (what --summary-json writes)."""
    started = time.perf_counter()
    model = load_model(model_path, setup.strategy, config.custom_objects)
    check_fits(model, examples, model_path)
    evaluator = Evaluator(setup.strategy, model, examples, config.global_batch_size)
    callbacks = keras.callbacks.CallbackList(
        [], add_progbar=verbose > 0, model=model, verbose=verbose, epochs=1, steps=evaluator.batches
    )
    callbacks.on_test_begin()
    began = time.perf_counter()
    results = evaluator.evaluate(callbacks.on_test_batch_begin, callbacks.on_test_batch_end)
    seconds = time.perf_counter() - began
    callbacks.on_test_end(results)
    plan = setup.plan
    return {
        "model_path": model_path,
        "model": model.name,
        "data": examples.source,
        "examples": len(examples),
        "examples_dropped": examples.dropped,
        "loss": results["loss"],
        "accuracy": results["accuracy"],
        "device_kind": plan.kind,
        "devices": plan.describe(),
        "replicas": setup.num_replicas,
        "global_batch_size": config.global_batch_size,
        "per_replica_batch_size": config.global_batch_size // setup.num_replicas,
        "batches": evaluator.batches,
        "evaluate_seconds": seconds,
        "wall_seconds": time.perf_counter() - started,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "warnings": list(setup.warnings),
    }

"""Child process for bench/test_trainer_speed.py: the trainer against a minimal hand-written loop
(one step per `tf.function` call, a host sync only at the end of a round) and against Keras
`model.fit`, and the input pipeline alone. Beside them, to explain the ratio: the trainer at
`--steps-per-execution 1`, and the ceiling of several steps per call, the trainer's traced
multi-step function called once per round with no callbacks.

All run in this one process, on the same MirroredStrategy, model, data and optimizer, in
alternating rounds so that drift in a shared, noisy machine hits them alike. Every contender is
timed the same way, from outside: the wall time of one call that runs a round's steps and ends on
a host sync, after warm-up steps that traced it. The trainer's own meter is reported beside it as a
cross-check. Prints one JSON line.

usage: python bench/trainer_vs_loop.py (--cpu-replicas N | --visible-gpus UUID...) [--rounds R]
       [--steps S] [--model cnn] [--global-batch-size B]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from training.devices.setup import add_device_args, plan_from_args, setup_device_strategy
from training.inputs import data, models
from training.settings.config import TrainConfig

WARMUP_STEPS = 3
Steps = Callable[[int], Any]  # runs a round of N steps and ends on a host sync


def main() -> None:
    parser = argparse.ArgumentParser()
    add_device_args(parser)  # the devices the parent planned
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--global-batch-size", type=int, default=128)
    args = parser.parse_args()

    setup = setup_device_strategy(plan_from_args(args))
    from training.loop.steps import StepsPerExecution
    from training.loop.trainer import Trainer

    config = replace(
        TrainConfig(), model=args.model, global_batch_size=args.global_batch_size, warmup_steps=WARMUP_STEPS
    )
    examples = data.synthetic(seed=config.seed)
    trainer = Trainer(config, setup, examples)  # --steps-per-execution auto, the default
    trainer_k1 = Trainer(replace(config, steps_per_execution="1"), setup, examples)
    meter_rates: list[float] = []

    def trainer_steps(steps: int, trainer: Trainer = trainer) -> None:
        # the real fit loop, progress bar and callbacks included (its output thrown away); fit
        # reads its last loss back on the host before it returns
        with contextlib.redirect_stdout(io.StringIO()):
            result = trainer.fit(epochs=1, steps_per_epoch=steps, verbose=1)
        rate = result.meter.samples_per_sec
        if trainer is not trainer_k1 and steps == args.steps and rate:
            meter_rates.append(rate)

    contenders: dict[str, Steps] = {
        "trainer": trainer_steps,
        "hand_loop": hand_loop(setup.strategy, config, examples),
        "keras_fit": keras_fit(setup.strategy, config, examples),
        "trainer_k1": lambda steps: trainer_steps(steps, trainer_k1),
        # what several steps per call can give at most here: one call, one fetch, no callbacks
        "ceiling": lambda steps: trainer.run_steps(steps, StepsPerExecution(steps)),
    }
    rates = measure(contenders, input_rounds(trainer.dist_dataset), args.rounds, args.steps, config)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "replicas": setup.num_replicas,
                "model": args.model,
                "global_batch_size": config.global_batch_size,
                "rounds": args.rounds,
                "steps_per_round": args.steps,
                "warmup_steps": WARMUP_STEPS,
                "device_kind": setup.plan.kind,
                "devices": setup.plan.describe(),
                "timer": "wall time of one call of --steps steps ending on a host sync, after warm-up",
                "rates": rates,
                "median_samples_per_sec": medians,
                "trainer_meter_samples_per_sec": statistics.median(meter_rates) if meter_rates else None,
                # paired: each round's contenders ran one right after the other, so that the load
                # from other processes on a shared machine cancels out
                "trainer_over_hand_loop": paired(rates["trainer"], rates["hand_loop"]),
                "keras_fit_over_hand_loop": paired(rates["keras_fit"], rates["hand_loop"]),
                "trainer_over_keras_fit": paired(rates["trainer"], rates["keras_fit"]),
                "trainer_k1_over_hand_loop": paired(rates["trainer_k1"], rates["hand_loop"]),
                "ceiling_over_hand_loop": paired(rates["ceiling"], rates["hand_loop"]),
                "auto_k": trainer.steps_per_execution,
                "input_over_training": medians["input_pipeline"] / medians["trainer"],
            }
        )
    )


def hand_loop(strategy: Any, config: TrainConfig, examples: data.Examples) -> Steps:
    """The reference: the minimal loop the trainer must keep up with, one step per traced call."""
    import keras
    import tensorflow as tf

    gb = config.global_batch_size
    with strategy.scope():
        model = models.build(config.model, examples.input_shape, examples.num_classes)
        optimizer = keras.optimizers.SGD(learning_rate=config.base_learning_rate, momentum=0.9)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        dist = strategy.experimental_distribute_dataset(data.make_dataset(examples, gb, config.seed))
    iterator = iter(dist)

    def replica_step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(loss_fn(y, model(x, training=True))) / gb
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def hand_step(it: Any) -> Any:
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=next(it)), axis=None
        )

    def hand_steps(steps: int) -> None:
        loss = hand_step(iterator)
        for _ in range(steps - 1):
            loss = hand_step(iterator)
        float(loss)  # the host sync: every step has run

    return hand_steps


def keras_fit(strategy: Any, config: TrainConfig, examples: data.Examples) -> Steps:
    """Keras' own fit under the same strategy: same model family, data pipeline, optimizer, loss."""
    import keras

    with strategy.scope():
        fit_model = models.build(config.model, examples.input_shape, examples.num_classes)
        fit_model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=config.base_learning_rate, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    fit_data = data.make_dataset(examples, config.global_batch_size, config.seed)

    def fit_steps(steps: int) -> None:
        history = fit_model.fit(fit_data, epochs=1, steps_per_epoch=steps, verbose=0)
        float(history.history["loss"][-1])

    return fit_steps


def input_rounds(dist_dataset: Any) -> Callable[[int], float]:
    """The trainer's own distributed pipeline iterated with no model: batches per second."""
    import tensorflow as tf

    pipe_iter = iter(dist_dataset)

    def input_round(steps: int) -> float:
        next(pipe_iter)
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(pipe_iter)
        tf.nest.map_structure(lambda t: t.values[0].numpy() if hasattr(t, "values") else t.numpy(), batch)
        return float(steps / (time.perf_counter() - start))

    return input_round


def measure(
    contenders: dict[str, Steps],
    input_round: Callable[[int], float],
    rounds: int,
    steps: int,
    config: TrainConfig,
) -> dict[str, list[float]]:
    """Samples/s of each contender per round, in alternating rounds, each timed the same way: one
    call that runs the round's steps and ends on a host sync, after warm-up steps."""
    gb = config.global_batch_size
    for run in contenders.values():  # trace each step function before anything is timed
        run(WARMUP_STEPS)
    rates: dict[str, list[float]] = {name: [] for name in (*contenders, "input_pipeline")}
    for _ in range(rounds):
        for name, run in contenders.items():
            run(WARMUP_STEPS)  # back in the caches after the others ran
            start = time.perf_counter()
            run(steps)
            rates[name].append(steps * gb / (time.perf_counter() - start))
        rates["input_pipeline"].append(input_round(steps * 4) * gb)
    return rates


def paired(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a/b."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


if __name__ == "__main__":
    main()
    # TensorFlow's interpreter shutdown with several live distributed iterators takes tens of
    # seconds here; the result is printed, so leave without it
    sys.stdout.flush()
    os._exit(0)

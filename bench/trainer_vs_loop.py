"""Child process for bench/test_trainer_speed.py: the trainer against a minimal hand-written loop.

Both run in this one process, on the same MirroredStrategy, model, data and optimizer, in
alternating rounds so that drift in a shared, noisy machine hits both alike. Prints one JSON line.

usage: python bench/trainer_vs_loop.py [--cpu-replicas N] [--rounds R] [--steps S] [--model cnn]
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
from dataclasses import replace

from training import data, models
from training.config import TrainConfig
from training.devices import plan_devices, setup_device_strategy

WARMUP_STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-replicas", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--global-batch-size", type=int, default=128)
    args = parser.parse_args()

    setup = setup_device_strategy(plan_devices(cpu_replicas=args.cpu_replicas))
    import keras
    import tensorflow as tf

    from training.train import Trainer

    strategy = setup.strategy
    config = replace(
        TrainConfig(), model=args.model, global_batch_size=args.global_batch_size, warmup_steps=WARMUP_STEPS
    )
    examples = data.synthetic(seed=config.seed)
    trainer = Trainer(config, setup, examples)

    # -- the reference: the minimal loop the trainer must keep up with --------------------------
    gb = args.global_batch_size
    with strategy.scope():
        model = models.build(args.model, examples.input_shape, examples.num_classes)
        optimizer = keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=0.9)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        dist = strategy.experimental_distribute_dataset(data.make_dataset(examples, gb, config.seed))
    iterator = iter(dist)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(loss_fn(y, model(x, training=True))) / gb
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def hand_step(it):
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=next(it)), axis=None
        )

    def hand_round(steps: int) -> float:
        for _ in range(WARMUP_STEPS):
            hand_step(iterator)
        loss = hand_step(iterator)
        float(loss)  # wait for the warm-up steps before starting the clock
        start = time.perf_counter()
        for _ in range(steps - WARMUP_STEPS):
            loss = hand_step(iterator)
        float(loss)
        return (steps - WARMUP_STEPS) * gb / (time.perf_counter() - start)

    def trainer_round(steps: int) -> float:
        # the real fit loop, progress bar included (its output thrown away)
        with contextlib.redirect_stdout(io.StringIO()):
            result = trainer.fit(epochs=1, steps_per_epoch=steps, verbose=1)
        assert result.meter is not None and result.meter.samples_per_sec is not None
        return result.meter.samples_per_sec

    pipe_iter = iter(trainer.dist_dataset)

    def input_round(steps: int) -> float:
        next(pipe_iter)
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(pipe_iter)
        tf.nest.map_structure(lambda t: t.values[0].numpy() if hasattr(t, "values") else t.numpy(), batch)
        return steps * gb / (time.perf_counter() - start)

    trainer_round(WARMUP_STEPS + 2)  # trace both steps before anything is timed
    hand_round(WARMUP_STEPS + 2)
    rates: dict[str, list[float]] = {"trainer": [], "hand_loop": [], "input_pipeline": []}
    for _ in range(args.rounds):
        rates["trainer"].append(trainer_round(args.steps))
        rates["hand_loop"].append(hand_round(args.steps))
        rates["input_pipeline"].append(input_round(args.steps * 4))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "replicas": setup.num_replicas,
                "model": args.model,
                "global_batch_size": gb,
                "rounds": args.rounds,
                "steps_per_round": args.steps,
                "warmup_steps": WARMUP_STEPS,
                "rates": rates,
                "median_samples_per_sec": medians,
                # paired: each round's trainer against the hand loop run right after it, so that the
                # load from other processes on a shared machine cancels out
                "trainer_over_hand_loop": statistics.median(
                    t / h for t, h in zip(rates["trainer"], rates["hand_loop"], strict=True)
                ),
                "input_over_training": medians["input_pipeline"] / medians["trainer"],
            }
        )
    )


if __name__ == "__main__":
    main()
    # TensorFlow's interpreter shutdown with several live distributed iterators takes tens of
    # seconds here; the result is printed, so leave without it
    sys.stdout.flush()
    os._exit(0)

"""Child process for bench/test_multistep_speed.py: several steps per traced call
(training/multistep.py) against the one-step-per-call hand loop, for one model. Prints one JSON line.

Same process, strategy, data pipeline and optimizer for every contender, in alternating rounds so
that drift on a shared machine hits them alike; each round is one call of `--steps` steps ending on
a host sync, timed from outside by the same wall clock after warm-up:
- hand_loop: one step per `tf.function` call, a host sync only at the end of the round (issue 10's
  reference);
- multistep: `--steps-per-execution auto` as the trainer would run it once wired: chunks of K steps
  (AutoSteps, warmed up first), each step's logs replayed to a Keras CallbackList with the progress
  bar (its output thrown away);
- multistep_k1: the same function and replay at K=1 (what the replay and the per-call fetch cost);
- trainer: today's Trainer.fit (one host sync per step), for reference.

usage: python bench/multistep_vs_loop.py (--cpu-replicas N | --visible-gpus UUID...) --model mlp
       [--rounds R] [--steps S] [--global-batch-size B]
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
from typing import Any

from training import data, models
from training.config import TrainConfig
from training.devices import add_device_args, plan_from_args, setup_device_strategy
from training.multistep import ChunkRunner, StepsPerExecution
from training.progress import EpochSums, ThroughputMeter, TrainResult

WARMUP_STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    add_device_args(parser)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--global-batch-size", type=int, default=128)
    parser.add_argument("--fixed-k", type=int, nargs="*", default=[], help="also measure these fixed K")
    args = parser.parse_args()

    setup = setup_device_strategy(plan_from_args(args))
    import keras
    import tensorflow as tf

    from training.train import Trainer

    strategy, gb = setup.strategy, args.global_batch_size
    config = replace(TrainConfig(), model=args.model, global_batch_size=gb, warmup_steps=WARMUP_STEPS)
    examples = data.synthetic(seed=config.seed)
    trainer = Trainer(config, setup, examples)

    def contender() -> tuple[Any, Any, Any]:
        """A model, optimizer and iterator of its own, built as the trainer builds them."""
        with strategy.scope():
            model = models.build(args.model, examples.input_shape, examples.num_classes)
            optimizer = keras.optimizers.SGD(learning_rate=config.base_learning_rate, momentum=0.9)
            optimizer.build(model.trainable_variables)
            dist = data.distribute(strategy, data.make_dataset(examples, gb, config.seed))
        return model, optimizer, iter(dist)

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def replica_step_for(model: Any, optimizer: Any) -> Any:
        def replica_step(x: Any, y: Any) -> Any:  # the trainer's step: loss and correct predictions
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_sum(loss_fn(y, logits)) / gb
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))
            return tf.stack([loss, tf.reduce_sum(tf.cast(hits, tf.float32))])

        return replica_step

    # -- the hand loop: one step per call, one host sync at the end of the round -----------------
    hand_model, hand_opt, hand_it = contender()
    hand_replica = replica_step_for(hand_model, hand_opt)

    @tf.function
    def hand_step(it: Any) -> Any:
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(hand_replica, args=next(it)), axis=None
        )

    def hand_steps(steps: int) -> None:
        out = hand_step(hand_it)
        for _ in range(steps - 1):
            out = hand_step(hand_it)
        float(out[0])  # the host sync: every step has run

    # -- several steps per call, with the per-step replay the trainer's loop would do -------------
    def multistep_runner(setting: int | str) -> tuple[Any, StepsPerExecution]:
        """The trainer's loop once wired (training.multistep.ChunkRunner: run a chunk, replay its
        steps' logs to the callbacks), with the progress bar, on a model of its own."""
        model, optimizer, iterator = contender()
        runner = ChunkRunner(strategy, replica_step_for(model, optimizer), setting, gb // setup.num_replicas)
        meter = ThroughputMeter(gb, WARMUP_STEPS)

        def run(steps: int) -> None:
            callbacks = keras.callbacks.CallbackList(
                [], add_history=True, add_progbar=True, model=model, verbose=1, epochs=1, steps=steps
            )
            sums, result = EpochSums(gb), TrainResult()
            with contextlib.redirect_stdout(io.StringIO()):
                callbacks.on_train_begin()
                callbacks.on_epoch_begin(0)
                step, logs = 0, None
                while step < steps:
                    rows = runner.run(iterator, step, steps, result.global_step, None, meter)
                    logs, step = runner.replay(rows, step, callbacks, sums, result)
                callbacks.on_epoch_end(0, logs)
                callbacks.on_train_end(logs)

        return run, runner.spe

    multistep, auto = multistep_runner("auto")
    multistep_k1, _ = multistep_runner(1)

    def trainer_steps(steps: int) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(epochs=1, steps_per_epoch=steps, verbose=1)

    contenders = {
        "hand_loop": hand_steps,
        "multistep": multistep,
        "multistep_k1": multistep_k1,
        "trainer": trainer_steps,
        **{f"multistep_k{k}": multistep_runner(k)[0] for k in args.fixed_k},
    }
    for run in contenders.values():  # trace; auto measures its steps and settles on K here
        run(WARMUP_STEPS)
    multistep(args.steps)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            run(WARMUP_STEPS)  # back in the caches after the others ran
            started = time.perf_counter()
            run(args.steps)
            rates[name].append(args.steps * gb / (time.perf_counter() - started))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "replicas": setup.num_replicas,
                "model": args.model,
                "global_batch_size": gb,
                "rounds": args.rounds,
                "steps_per_round": args.steps,
                "device_kind": setup.plan.kind,
                "devices": setup.plan.describe(),
                "auto_k": auto.auto.k if auto.auto else None,
                "auto_seconds_per_step": auto.auto.seconds_per_step if auto.auto else None,
                "timer": "wall time of one call of --steps steps ending on a host sync, after warm-up",
                "rates": rates,
                "median_samples_per_sec": medians,
                "multistep_over_hand_loop": paired(rates["multistep"], rates["hand_loop"]),
                "multistep_k1_over_hand_loop": paired(rates["multistep_k1"], rates["hand_loop"]),
                "trainer_over_hand_loop": paired(rates["trainer"], rates["hand_loop"]),
                **{
                    f"multistep_k{k}_over_hand_loop": paired(rates[f"multistep_k{k}"], rates["hand_loop"])
                    for k in args.fixed_k
                },
            }
        )
    )


def paired(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a/b (each round's contenders ran one after the other)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # TensorFlow's shutdown with live distributed iterators takes tens of seconds

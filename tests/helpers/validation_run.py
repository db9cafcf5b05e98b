"""Child process for the validation tests, on N CPU replicas (one device set per process).

python tests/helpers/validation_run.py REPLICAS OUT_DIR
    train with a held-out split, Keras callbacks and a scaled, warmed-up learning rate; write
    the summary and the rate of each step to OUT_DIR
python tests/helpers/validation_run.py --shares REPLICAS
    print (JSON) what each replica receives of the evaluation and training streams when the
    data leave a remainder, and an Evaluator's figures beside NumPy's on the same examples
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training.devices.setup import plan_devices, setup_device_strategy
from training.inputs import data, validation
from training.settings.config import TrainConfig

# 1000 examples, a quarter held out: 750 to train on (5 steps of 128) and 250 to validate on, whose
# last batch of 122 is partial; the rate is scaled by 128/64 and warmed up over the first epoch
CONFIG = replace(
    TrainConfig(),
    model="mlp",
    optimizer="plain-sgd",
    global_batch_size=128,
    seed=7,
    epochs=4,
    validation_split=0.25,
    scale_learning_rate="linear",
    reference_batch_size=64,
    warmup_epochs=1.0,
    # the callback reads the optimizer's rate at each step's begin: with several steps per call it
    # would read it after the call ran (the documented cost of --steps-per-execution K > 1)
    steps_per_execution="1",
)
EXAMPLES = 1000


def main() -> None:
    replicas, out = int(sys.argv[1]), Path(sys.argv[2])
    setup = setup_device_strategy(plan_devices(cpu_replicas=replicas))
    import keras

    from training.app.run import run

    config = replace(CONFIG, log_dir=str(out / "tb"))
    examples, held_out = validation.split(
        data.synthetic(seed=7, num_examples=EXAMPLES), 0.25, config.seed, config.global_batch_size
    )
    rates: list[float] = []

    class RecordRate(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
            # the schedule at the optimizer's step count: the rate of the step about to run
            rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    callbacks = [
        RecordRate(),
        # stops after epoch 2 whatever the figures (no improvement of 10), if it sees val_loss at all
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0),
        keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_loss", save_best_only=True),
    ]
    summary = run(config, setup, examples, callbacks, verbose=0, validation=held_out)
    (out / "summary.json").write_text(json.dumps({**summary.as_dict(), "rates": rates}))


# the --shares case: 2 full global batches of 2 per replica, then a remainder of 3
SHARES_PER_REPLICA, SHARES_REMAINDER = 2, 3


def shares(replicas: int) -> dict[str, Any]:
    setup = setup_device_strategy(plan_devices(cpu_replicas=replicas))
    import keras
    import tensorflow as tf

    from training.loop.evaluate import Evaluator

    strategy, global_batch = setup.strategy, SHARES_PER_REPLICA * replicas
    count = 2 * global_batch + SHARES_REMAINDER
    rng = np.random.default_rng(3)
    x = rng.normal(size=(count, 4)).astype(np.float32)
    x[:, 0] = np.arange(count)  # each example's number, to check that each is counted once
    examples = data.Examples(x, rng.integers(0, 3, size=count).astype(np.int32), 3, "numbered")

    local = strategy.experimental_local_results

    def sizes(per_replica: Any) -> list[int]:
        return [int(t.shape[0]) for t in local(per_replica)]

    eval_shares, counted, padded = [], [], 0
    for xb, _yb, wb in data.distribute(strategy, data.make_eval_dataset(examples, global_batch)):
        eval_shares.append(sizes(xb))
        for xs, ws in zip(local(xb), local(wb), strict=True):
            numbers, weights = xs.numpy()[:, 0], ws.numpy()
            counted += [int(i) for i in numbers[weights == 1]]
            padded += int((weights == 0).sum())
    # the training stream, for twice as many steps as the data hold: every share full
    stream = iter(data.distribute(strategy, data.make_dataset(examples, global_batch, seed=1)))
    train_shares = [sizes(next(stream)[0]) for _ in range(2 * count // global_batch + 1)]

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
        )
    figures = Evaluator(strategy, model, examples, global_batch).evaluate()
    # NumPy's figures from one device's logits: cross-entropy as log-sum-exp minus the true logit
    logits = np.asarray(model(tf.constant(x), training=False), np.float64)
    top = logits.max(axis=1)
    log_sum = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    expected = {
        "loss": float(np.mean(log_sum - logits[np.arange(count), examples.y])),
        "accuracy": float(np.mean(logits.argmax(axis=1) == examples.y)),
    }
    return {
        "global_batch": global_batch,
        "examples": count,
        "eval_shares": eval_shares,
        "counted": counted,
        "padded": padded,
        "train_shares": train_shares,
        "evaluated": figures,
        "expected": expected,
    }


if __name__ == "__main__":
    if sys.argv[1] == "--shares":
        print(json.dumps(shares(int(sys.argv[2]))))
    else:
        main()

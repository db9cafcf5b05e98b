"""Child process for the validation test: train with a held-out split, Keras callbacks and a
scaled, warmed-up learning rate on N CPU replicas; write the summary and the rate of each step.

usage: python tests/helpers/validation_run.py REPLICAS OUT_DIR
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

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

    from training.loop import trainer as train

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
    summary = train.run(config, setup, examples, callbacks, verbose=0, validation=held_out)
    (out / "summary.json").write_text(json.dumps({**summary, "rates": rates}))


if __name__ == "__main__":
    main()

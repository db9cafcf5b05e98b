"""A user's own script across workers, for tests/e2e/test_api_backup.py: `model.fit` under the
MultiWorkerMirroredStrategy that `training.setup_device_strategy(cluster="tf-config")` builds
(TF_CONFIG names this worker), backed up by `training.BackupAndRestore` in $BACKUP. With
KILL_AT_EPOCH=N this worker ends itself at the start of epoch N (os._exit: what a lost node looks
like to its peers). Prints one JSON line: the epochs this run trained, the backups it wrote."""

from __future__ import annotations

import json
import os

import training

setup = training.setup_device_strategy(cluster="tf-config", collective_timeout=15.0)

import keras  # noqa: E402 (after the devices are chosen, as the API requires)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

KILL_AT = int(os.environ.get("KILL_AT_EPOCH", "-1"))


class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        if epoch == KILL_AT:
            os._exit(70)


rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int32")
with setup.strategy.scope():
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
backup = training.BackupAndRestore(os.environ["BACKUP"], setup)
history = model.fit(dataset, epochs=4, steps_per_epoch=4, callbacks=[backup, Kill()], verbose=0)
loss = history.history["loss"][-1]
print(json.dumps({"epochs": history.epoch, "saves": backup.saves, "chief": setup.is_chief, "loss": loss}))

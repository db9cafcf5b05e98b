"""Child process pinning a Keras 3.15 behaviour: `model.fit` with steps_per_execution=2 under
MirroredStrategy with 2 replicas. Prints FAILS: <error> or WORKS, so the test notices a fix.
"""

from __future__ import annotations

import keras
import numpy as np

from training.devices.setup import plan_devices, setup_device_strategy

setup = setup_device_strategy(plan_devices(cpu_replicas=2))
import tensorflow as tf  # noqa: E402  (after the device setup, as it must be)

with setup.strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
x = np.ones((64, 4), np.float32)
try:
    model.fit(x, np.ones((64, 2), np.float32), batch_size=16, epochs=1, verbose=0)
except tf.errors.InvalidArgumentError as exc:
    print("FAILS:", str(exc).splitlines()[0])
else:
    print("WORKS")

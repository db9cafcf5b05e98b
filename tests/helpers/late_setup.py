"""Child process for the guard test: run a TensorFlow op, then call setup_device_strategy()."""

from __future__ import annotations

import sys

import tensorflow as tf

from training.devices.setup import LateSetupError, plan_devices, setup_device_strategy

tf.constant(1.0) + 1.0  # any op initialises the runtime
try:
    setup_device_strategy(plan_devices(cpu_replicas=2))
except LateSetupError as exc:
    print(exc)
    sys.exit(3)
sys.exit(0)

"""Child process for the equivalence test: train one epoch on N CPU replicas, save the weights.

usage: python tests/helpers/replica_run.py REPLICAS STEPS OUT.npz
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from training.devices.setup import plan_devices, setup_device_strategy
from training.inputs import data
from training.settings.config import TrainConfig


def main() -> None:
    replicas, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    setup = setup_device_strategy(plan_devices(cpu_replicas=replicas))
    from training.loop.trainer import Trainer

    config = replace(TrainConfig(), optimizer="plain-sgd", learning_rate=0.01, global_batch_size=64, seed=7)
    examples = data.synthetic(seed=7, num_examples=steps * 64)
    trainer = Trainer(config, setup, examples)
    initial = trainer.weights()
    trainer.fit(epochs=1, steps_per_epoch=steps, verbose=0)
    trained = {f"w{i}": w for i, w in enumerate(trainer.weights())}
    np.savez(out, replicas=setup.num_replicas, **trained, **{f"init{i}": w for i, w in enumerate(initial)})


if __name__ == "__main__":
    main()

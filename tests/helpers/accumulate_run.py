"""Child process for tests/e2e/test_accumulate_e2e.py: --accumulate-steps on 2 CPU replicas, MLP.

In one process (one device set): the same 8 steps from the same initial weights at K=1 and at K=4
micro-batches (3 steps per traced call), and a K=4 run stopped after 4 steps by its checkpoint and
resumed in a new Trainer. Prints one JSON line: the weights' distances and the step counts.

usage: python tests/helpers/accumulate_run.py CHECKPOINT_DIR
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np

from training.devices.setup import plan_devices, setup_device_strategy
from training.inputs import data
from training.settings.config import TrainConfig

STEPS = 8


def distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.linalg.norm(np.concatenate([(x - y).ravel() for x, y in zip(a, b, strict=True)])))


def main() -> None:
    folder = sys.argv[1]
    setup = setup_device_strategy(plan_devices(cpu_replicas=2))
    from training.checkpoints.resume import resume_latest
    from training.checkpoints.store import CheckpointStore
    from training.loop.trainer import Trainer

    base = replace(
        TrainConfig(),
        model="mlp",
        optimizer="sgd",
        learning_rate=0.05,
        global_batch_size=64,
        seed=3,
        steps_per_execution="3",
    )
    examples = data.synthetic(seed=3, num_examples=STEPS * 64)
    weights, runs = {}, {}
    for k in (1, 4):
        trainer = Trainer(replace(base, accumulate_steps=k), setup, examples)
        if k == 1:
            initial = trainer.weights()
        else:  # the same start: Keras' seeded initialisers need not give the same draw twice
            trainer.model.set_weights(initial)
        state = trainer.fit(epochs=1, steps_per_epoch=STEPS, verbose=0)
        weights[k], runs[k] = trainer.weights(), state.calls

    # K=4 with a checkpoint after step 4, then a fresh Trainer resuming from it to step 8
    config = replace(base, accumulate_steps=4)
    store = CheckpointStore(folder)
    first = Trainer(config, setup, examples)
    first.model.set_weights(initial)
    first.fit(epochs=1, steps_per_epoch=4, verbose=0, checkpoints=store)
    second = Trainer(config, setup, examples)
    start = resume_latest(store, second, {}, epochs=2, notify=lambda _line: None)
    assert start is not None and start.global_step == 4
    second.fit(epochs=2, steps_per_epoch=4, verbose=0, state=start)
    print(
        json.dumps(
            {
                "moved": distance(weights[1], initial),
                "k4_vs_k1": distance(weights[4], weights[1]),
                "resumed_vs_k4": distance(second.weights(), weights[4]),
                "calls": {str(k): v for k, v in runs.items()},
            }
        )
    )


if __name__ == "__main__":
    main()

"""Child process for tests/e2e/test_multistep_e2e.py: the Trainer itself (not the bare traced loop) on 2
CPU replicas, trained with --steps-per-execution 1, 7 and auto, and a fixed K with --save-freq.
Prints one JSON line: per setting, the weights' largest difference from K=1 (0.0 when bit for bit),
the steps each callback saw end, the chunk sizes run, and the checkpoints written; and a run with
K=5 that gets SIGTERM while the callbacks replay its first chunk (it must stop at the chunk's end).

usage: python tests/helpers/trainer_chunks.py CHECKPOINT_ROOT
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from training.devices.setup import plan_devices, setup_device_strategy
from training.inputs import data
from training.settings.config import TrainConfig

STEPS, EPOCHS = 11, 2


class Seen(keras.callbacks.Callback):
    def __init__(self, sigterm_after: int | None = None) -> None:
        super().__init__()
        self.ended: list[int] = []
        self.sigterm_after = sigterm_after

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.ended.append(batch)
        if len(self.ended) == self.sigterm_after:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler preempting the job would


def main() -> None:
    root = Path(sys.argv[1])
    setup = setup_device_strategy(plan_devices(cpu_replicas=2))
    from training.checkpoints.store import CheckpointStore
    from training.loop.errors import TrainingInterrupted
    from training.loop.trainer import Trainer

    examples = data.synthetic(seed=3, num_examples=STEPS * 32)
    base = replace(TrainConfig(), model="mlp", global_batch_size=32, seed=3, optimizer="sgd")
    out: dict[str, dict] = {}
    reference: list[np.ndarray] | None = None
    initial: list[np.ndarray] | None = None
    runs = (
        ("k1", "1", None),
        ("k7", "7", None),
        ("auto", "auto", None),
        ("k4_save3", "4", 3),
        ("sigterm", "5", None),
    )
    for name, setting, save_every in runs:
        trainer = Trainer(replace(base, steps_per_execution=setting), setup, examples)
        state = trainer.new_state()  # records each traced call's steps, also where a signal stops it
        seen = Seen(sigterm_after=2 if name == "sigterm" else None)
        store = CheckpointStore(str(root / name)) if name in ("k4_save3", "sigterm") else None
        if initial is None:
            initial = trainer.weights()
        stopped: dict = {}
        try:
            result = trainer.fit(
                EPOCHS,
                STEPS,
                [seen],
                verbose=0,
                state=state,
                checkpoints=store,
                save_every_steps=save_every,
                handle_signals=True,
            )
            global_step = result.global_step
        except TrainingInterrupted as stop:
            stopped = {"signal": stop.signum, "checkpoint": stop.checkpoint}
            global_step = stop.global_step
        weights = trainer.weights()
        if reference is None:
            reference = weights
        out[name] = {
            "stopped": stopped,
            "from_initial": max(float(np.max(np.abs(w - i))) for w, i in zip(weights, initial, strict=True)),
            "max_diff": max(float(np.max(np.abs(w - r))) for w, r in zip(weights, reference, strict=True)),
            "ended": seen.ended,
            "chunks": state.calls,
            "global_step": global_step,
            "checkpoints": sorted(p.name for p in (root / name).glob("ckpt-*.npz")),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

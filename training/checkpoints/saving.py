"""The trainer's side of saving checkpoints: when fit saves, and what it writes.

checkpoint.py owns the files (format, atomic writes, finding the newest good one); resume.py reads
them back; this module decides, from --save-freq and a pending SIGINT/SIGTERM, when the loop
saves, and builds the manifest from where the run stands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from training.checkpoints.store import CheckpointStore, Manifest
from training.loop.errors import TrainingDiverged
from training.loop.state import EpochSums, ThroughputMeter, TrainResult

# the names and values of every variable the next step depends on (Trainer.state)
StateFn = Callable[[], tuple[Sequence[str], Sequence[np.ndarray]]]


class Checkpointing:
    """Saves for one fit call into `store` (None: never) and records each one in `result`.

    With `every_steps` None (--save-freq epoch) it saves at each epoch's end; with a number, after
    every global step that is a multiple of it. Either way also at the end of the run and after the
    step during which a signal asked to stop.
    """

    def __init__(
        self,
        store: CheckpointStore | None,
        result: TrainResult,
        meter: ThroughputMeter,
        *,
        state: StateFn,
        replicas: int,
        every_steps: int | None,
        fingerprint: Mapping[str, Any] | None,
    ) -> None:
        self.store, self.result, self.meter = store, result, meter
        self.state, self.replicas = state, replicas
        self.every_steps = every_steps
        self.fingerprint = dict(fingerprint or {})

    def mid_epoch(self, epoch: int, step_in_epoch: int, sums: EpochSums, stopping: bool) -> None:
        """After a step that does not end its epoch."""
        due = self.every_steps is not None and self.result.global_step % self.every_steps == 0
        if self.store is not None and (stopping or due):
            self.save(epoch, step_in_epoch, sums.totals())

    def epoch_end(self, epochs_done: int, final: bool, stopping: bool) -> None:
        """After an epoch's last step; `final` when it is the run's last epoch (or stopped early)."""
        if self.store is None:
            return
        due = self.every_steps is None or self.result.global_step % self.every_steps == 0
        if final or stopping or due:
            # the next epoch starts its sums afresh
            self.save(epochs_done, 0, (0.0, 0.0, 0))

    def save(self, epochs_done: int, step_in_epoch: int, sums: tuple[float, float, int]) -> None:
        assert self.store is not None
        result = self.result
        names, arrays = self.state()
        if self.store.faults is not None:
            arrays = self.store.faults.weights_to_save(result.global_step, arrays)
        for name, array in zip(names, arrays, strict=True):
            if not np.isfinite(array).all():
                # a loss is computed before its step's update: the update itself can overflow
                raise TrainingDiverged(result.global_step, float("nan"), result.last_checkpoint, name)
        manifest = Manifest(
            global_step=result.global_step,
            epoch=epochs_done,
            step_in_epoch=step_in_epoch,
            fingerprint=dict(self.fingerprint),
            history=list(result.history),
            loss_sum=sums[0],
            correct_sum=sums[1],
            seen=sums[2],
            replicas=self.replicas,
            stopped_early=result.stopped_early,
        )
        result.last_checkpoint = self.store.save(manifest, names, arrays).name
        self.meter.pause()  # the write is not training time

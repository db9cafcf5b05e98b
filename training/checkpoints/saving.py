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
from training.loop.state import RunState

# the names and values of every variable the next step depends on (Trainer.state)
StateFn = Callable[[], tuple[Sequence[str], Sequence[np.ndarray]]]


class Checkpointing:
    """Saves for one fit call into `store` (None: never), from where `run` stands, and records each
    checkpoint there.

    With `every_steps` None (--save-freq epoch) it saves at each epoch's end; with a number, after
    every global step that is a multiple of it. Either way also at the end of the run and after the
    step during which a signal asked to stop.
    """

    def __init__(
        self,
        store: CheckpointStore | None,
        run: RunState,
        *,
        state: StateFn,
        replicas: int,
        every_steps: int | None,
        fingerprint: Mapping[str, Any] | None,
    ) -> None:
        self.store, self.run = store, run
        self.state, self.replicas = state, replicas
        self.every_steps = every_steps
        self.fingerprint = dict(fingerprint or {})

    def mid_epoch(self) -> None:
        """After a step that does not end its epoch."""
        due = self.every_steps is not None and self.run.global_step % self.every_steps == 0
        if self.store is not None and (self.run.stop_requested or due):
            self.save()

    def epoch_end(self, final: bool) -> None:
        """After an epoch's last step (RunState.end_epoch); `final` when it is the run's last epoch
        (or it stopped early)."""
        if self.store is None:
            return
        due = self.every_steps is None or self.run.global_step % self.every_steps == 0
        if final or self.run.stop_requested or due:
            self.save()

    def save(self) -> None:
        assert self.store is not None
        run = self.run
        names, arrays = self.state()
        if self.store.faults is not None:
            arrays = self.store.faults.weights_to_save(run.global_step, arrays)
        for name, array in zip(names, arrays, strict=True):
            if not np.isfinite(array).all():
                # a loss is computed before its step's update: the update itself can overflow
                raise TrainingDiverged(run.global_step, float("nan"), run.last_checkpoint, name)
        loss_sum, correct_sum, seen = run.sums.totals()
        manifest = Manifest(
            global_step=run.global_step,
            epoch=run.epoch,
            step_in_epoch=run.step_in_epoch,
            fingerprint=dict(self.fingerprint),
            history=list(run.history),
            loss_sum=loss_sum,
            correct_sum=correct_sum,
            seen=seen,
            replicas=self.replicas,
            stopped_early=run.stopped_early,
        )
        run.last_checkpoint = self.store.save(manifest, names, arrays).name
        run.meter.pause()  # the write is not training time

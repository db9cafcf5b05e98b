"""Where a training run stands: one `RunState` owns its position (global step, epoch, step in the
epoch), the running sums of the epoch, the history, the throughput meter, the newest checkpoint and
whether a stop was asked for. The loop in trainer.py moves it forward one step at a time
(`record_step`); a checkpoint's manifest saves it and `RunState.resume` puts it back. No TensorFlow
here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from training.loop.errors import TrainingDiverged, TrainingInterrupted


@dataclass
class ThroughputMeter:
    """Samples per second over the steps after the first `warmup_steps` (tracing, autotuning)."""

    global_batch_size: int
    warmup_steps: int
    steps: int = 0
    measured_steps: int = 0
    measured_seconds: float = 0.0
    _last: float | None = None

    def step_done(self, now: float) -> None:
        self.steps += 1
        if self.steps > self.warmup_steps and self._last is not None:
            self.measured_steps += 1
            self.measured_seconds += now - self._last
        self._last = now

    def pause(self) -> None:
        """Time between calls to step_done across a pause (epoch end, checkpoint) is not counted."""
        self._last = None

    @property
    def samples_per_sec(self) -> float | None:
        if not self.measured_steps or self.measured_seconds <= 0:
            return None
        return self.measured_steps * self.global_batch_size / self.measured_seconds


@dataclass
class EpochSums:
    """Running sums over the steps of one epoch, from which its logged loss and accuracy come."""

    global_batch_size: int
    loss_sum: float = 0.0
    correct_sum: float = 0.0
    seen: int = 0

    def add(self, loss: float, correct: float) -> dict[str, float]:
        """Count one step; returns the epoch's logs so far (mean loss per step, accuracy)."""
        self.loss_sum += loss
        self.correct_sum += correct
        self.seen += self.global_batch_size
        steps_seen = self.seen // self.global_batch_size
        return {"loss": self.loss_sum / steps_seen, "accuracy": self.correct_sum / self.seen}

    def totals(self) -> tuple[float, float, int]:
        return self.loss_sum, self.correct_sum, self.seen


@dataclass
class RunState:
    """A run's position and records. `epoch` and `step_in_epoch` say where the next step goes;
    `global_step` counts every step the model has trained, resumed ones included; `steps` those of
    this process. `calls` holds the steps each traced call ran (several steps per call)."""

    meter: ThroughputMeter
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    sums: EpochSums = field(init=False)
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    calls: list[int] = field(default_factory=list)
    last_checkpoint: str | None = None
    resumed_from: str | None = None
    stopped_early: bool = False
    # the signal that asked the run to stop after this step (on several workers: once they all
    # agreed), or None; set by signals.GracefulStop
    stop_signal: int | None = None
    train_seconds: float = 0.0  # the whole loop, validation included
    validation_seconds: float = 0.0  # evaluating the validation data after each epoch

    def __post_init__(self) -> None:
        self.sums = EpochSums(self.meter.global_batch_size)

    @classmethod
    def resume(cls, meter: ThroughputMeter, manifest: Any, checkpoint: str) -> RunState:
        """Where a checkpoint's manifest left a run: its position, history and, if it stopped inside
        an epoch, that epoch's sums, so the logged loss and accuracy continue where they were."""
        state = cls(
            meter,
            global_step=manifest.global_step,
            epoch=manifest.epoch,
            step_in_epoch=manifest.step_in_epoch,
            history=list(manifest.history),
            last_checkpoint=checkpoint,
            resumed_from=checkpoint,
            stopped_early=manifest.stopped_early,
        )
        state.sums = EpochSums(
            meter.global_batch_size, manifest.loss_sum, manifest.correct_sum, manifest.seen
        )
        return state

    def begin_epoch(self, epoch: int) -> None:
        """Enter `epoch`: a resumed run goes on inside the epoch it stopped in, with its sums."""
        if epoch != self.epoch or self.step_in_epoch == 0:
            self.epoch, self.step_in_epoch = epoch, 0
            self.sums = EpochSums(self.meter.global_batch_size)

    def first_epoch(self, epochs: int) -> int:
        """The epoch a fit call starts at: none left where a resumed run had stopped early."""
        return epochs if self.stopped_early else self.epoch

    def record_step(self, loss: float, correct: float) -> dict[str, float]:
        """One step done: count it and return the epoch's logs so far. A loss that is not finite
        raises TrainingDiverged after counting its step: no checkpoint is written of those weights,
        so the last good one stays the newest."""
        self.steps += 1
        self.global_step += 1
        if not math.isfinite(loss):
            raise TrainingDiverged(self.global_step, loss, self.last_checkpoint)
        self.step_in_epoch += 1
        return self.sums.add(loss, correct)

    def end_epoch(self, logs: dict[str, float], stopped_early: bool) -> None:
        """The epoch's last step is done: its logs join the history; the next epoch starts afresh."""
        self.history.append({"epoch": self.epoch + 1, **logs})
        self.stopped_early = stopped_early
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.sums = EpochSums(self.meter.global_batch_size)

    @property
    def stop_requested(self) -> bool:
        return self.stop_signal is not None

    def raise_if_stop_requested(self) -> None:
        """Called after a whole step (and its checkpoint, if one was due): stop here if asked to."""
        if self.stop_signal is not None:
            raise TrainingInterrupted(self.stop_signal, self.global_step, self.last_checkpoint)

    def position(self) -> tuple[int, str | None]:
        """(global steps trained, newest checkpoint): what a stop's message reports."""
        return self.global_step, self.last_checkpoint

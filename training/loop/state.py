"""Where a training run stands: its position, the running sums of the epoch, and its throughput.

Plain records that the loop in train.py updates after each step and that a checkpoint's manifest
saves and restores (checkpointing.py); no TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0  # steps run by this call
    meter: ThroughputMeter | None = None
    train_seconds: float = 0.0  # the whole loop, validation included
    validation_seconds: float = 0.0  # evaluating the validation data after each epoch
    stopped_early: bool = False
    global_step: int = 0  # steps the model has trained in all, resumed ones included
    last_checkpoint: str | None = None

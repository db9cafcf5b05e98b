"""The arithmetic of `ThroughputCallback` (training.api.throughput), without Keras: the samples/s
of each timed call after the warm-up, their median and its 95% interval, and the line printed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from common.errors import UserError
from common.stats import median_ci


@dataclass
class StepRates:
    """Samples/s of each timed call after the warm-up, and what the headline numbers are."""

    global_batch_size: int
    warmup_steps: int
    steps: int = 0  # every step seen, warm-up included
    rates: list[float] = field(default_factory=list)  # samples/s of each measured call
    measured_steps: int = 0
    measured_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name, least in (("global_batch_size", 1), ("warmup_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"ThroughputCallback: {name} must be an int >= {least}, got {value!r}")

    def call_done(self, steps: int, seconds: float | None) -> None:
        """Count a call of `steps` steps that took `seconds` (None: it was not timed)."""
        first = self.steps  # 0-based index of the call's first step
        self.steps += steps
        # a call with a warm-up step in it (several steps per call) is all warm-up
        if first < self.warmup_steps or seconds is None or seconds <= 0:
            return
        self.rates.append(steps * self.global_batch_size / seconds)
        self.measured_steps += steps
        self.measured_seconds += seconds

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The distribution-free 95% interval of the median (order statistics); None with fewer than
        6 timed calls, where even [min, max] covers the median with less than 95%."""
        return median_ci(self.rates)

    @property
    def overall(self) -> float | None:
        """Measured samples over measured seconds: what the trainer's summary reports."""
        if not self.measured_steps:
            return None
        return self.measured_steps * self.global_batch_size / self.measured_seconds

    def describe(self, replicas: int) -> str:
        """One line: the median samples/s in total and per replica, its interval, what was timed."""
        median, interval = self.median, self.interval
        if median is None:
            return (
                f"throughput: not measured ({self.steps} step(s), none timed after the "
                f"{self.warmup_steps} warm-up steps: train longer or lower warmup_steps)"
            )
        spread = (
            f"95% CI [{interval[0]:,.0f}, {interval[1]:,.0f}]"
            if interval
            else "no 95% interval (fewer than 6 timed calls)"
        )
        timed = f"{self.measured_steps} steps"
        if len(self.rates) != self.measured_steps:
            timed = f"{len(self.rates)} calls ({self.measured_steps} steps)"
        return (
            f"throughput: {median:,.0f} samples/s ({median / replicas:,.0f} per replica, {replicas} "
            f"replicas), {spread}, median of {timed} after {self.steps - self.measured_steps} warm-up, "
            f"global batch {self.global_batch_size}"
        )

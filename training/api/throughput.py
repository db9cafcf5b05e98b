"""`ThroughputCallback`: samples per second in a user's own `model.fit`, warm-up excluded, with a
95% interval, measured as the trainer measures its own steps.

Each `train_function` call (one step, or `steps_per_execution` steps) is timed from the end of the
previous call to its own end, so the input pipeline and the other callbacks count, as they do in a
real run; the first call of an epoch is timed from its start, so the epoch boundary (validation,
checkpoints) does not. Keras converts the step's logs to Python numbers before this callback sees
them, which waits for the step to finish, so an end time is a finished step, on GPUs too.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import keras

from training.api.rates import StepRates


class ThroughputCallback(keras.callbacks.Callback):
    """Samples/s of `model.fit`, in total and per replica, after `warmup_steps` steps.

    Keras does not tell a callback the batch size, so it is an argument: the global batch, the
    batch the dataset is batched by (per-replica batch x replicas). The replica count is read from
    the model's strategy when training begins. After `fit`: `samples_per_sec` (the median over
    the timed calls), `samples_per_sec_per_replica`, `interval` (its 95% interval, low and high;
    None with fewer than 6 timed calls), `overall_samples_per_sec` (measured samples over measured
    seconds) and `replicas`; None where nothing was measured. Prints one line at the end of
    training unless `verbose=0`.
    """

    def __init__(self, global_batch_size: int, warmup_steps: int = 5, verbose: int = 1) -> None:
        super().__init__()
        self.rates = StepRates(global_batch_size, warmup_steps)  # checks both (UserError)
        self.global_batch_size = global_batch_size
        self.warmup_steps = warmup_steps
        self.verbose = verbose
        self.replicas = 1
        self._last: float | None = None  # end of the previous call in this epoch
        self._begin_step = 0

    @property
    def samples_per_sec(self) -> float | None:
        return self.rates.median

    @property
    def samples_per_sec_per_replica(self) -> float | None:
        median = self.rates.median
        return None if median is None else median / self.replicas

    @property
    def interval(self) -> tuple[float, float] | None:
        return self.rates.interval

    @property
    def overall_samples_per_sec(self) -> float | None:
        return self.rates.overall

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        import tensorflow as tf

        strategy = getattr(self.model, "distribute_strategy", None) or tf.distribute.get_strategy()
        self.replicas = int(strategy.num_replicas_in_sync)
        self.rates = StepRates(self.global_batch_size, self.warmup_steps)  # a new fit starts afresh

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._last = None

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._begin_step = batch
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        # with steps_per_execution k, Keras calls begin(first step) and end(last step) once per k
        steps = max(1, batch - self._begin_step + 1)
        self.rates.call_done(steps, None if self._last is None else now - self._last)
        self._last = now

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.verbose:
            print(self.describe(), file=sys.stdout, flush=True)

    def describe(self) -> str:
        """The line printed at the end of training."""
        return self.rates.describe(self.replicas)

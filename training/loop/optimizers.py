"""The Keras optimizer a run trains with, and the learning-rate schedule of its warm-up.

The numbers come from training.loop.learning_rate (no TensorFlow there, so the plan can print them);
this module turns them into Keras objects. The warm-up is a `LearningRateSchedule` of the
optimizer's step count, and the step count is one of the optimizer's variables that a checkpoint
saves: a resumed run continues the schedule exactly where it stopped.
"""

from __future__ import annotations

from typing import Any

import keras

from training.loop.learning_rate import rate_plan
from training.settings.config import TrainConfig


@keras.saving.register_keras_serializable(package="gpudiag")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`start` at step 0, rising linearly to `target` at step `warmup_steps`, then `target`."""

    def __init__(self, start: float, target: float, warmup_steps: int) -> None:
        super().__init__()
        self.start, self.target, self.warmup_steps = float(start), float(target), int(warmup_steps)

    def __call__(self, step: Any) -> Any:
        done = keras.ops.minimum(keras.ops.cast(step, "float32") / float(max(1, self.warmup_steps)), 1.0)
        return self.start + (self.target - self.start) * done

    def get_config(self) -> dict[str, Any]:
        # what model.save() writes with the optimizer, so a saved model loads with its schedule
        return {"start": self.start, "target": self.target, "warmup_steps": self.warmup_steps}


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | LinearWarmup:
    """A constant rate, or the warm-up schedule with --warmup-epochs."""
    plan = rate_plan(config)
    warmup = plan.warmup_steps(steps_per_epoch)
    if not warmup:
        return plan.target
    return LinearWarmup(plan.warmup_start(warmup), plan.target, warmup)


def make_optimizer(name: str, learning_rate: float | LinearWarmup) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if name == "plain-sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}: choose sgd, plain-sgd or adam")


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The run's optimizer (inside strategy.scope(): its variables are mirrored)."""
    optimizer = make_optimizer(config.optimizer, learning_rate(config, steps_per_epoch))
    if config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer

"""The learning rate a run trains with: the base rate (--learning-rate, or the optimizer's usual
one), scaled for the global batch (--scale-learning-rate, --reference-batch-size) and reached
through a linear warm-up (--warmup-epochs), as in Goyal et al., "Accurate, Large Minibatch SGD:
Training ImageNet in 1 Hour" (2017).

Plain arithmetic, no TensorFlow: the plan prints it before TensorFlow starts, and the Keras
schedule that applies it (training.loop.optimizers.LinearWarmup) takes its numbers from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.settings.config import TrainConfig


@dataclass(frozen=True)
class RatePlan:
    base: float  # the rate for the reference batch
    from_default: bool  # base is the optimizer's usual rate (no --learning-rate)
    optimizer: str
    rule: str  # none, linear or sqrt
    global_batch_size: int
    reference_batch_size: int
    warmup_epochs: float

    @property
    def factor(self) -> float:
        """How much the global batch scales the base rate: k (linear) or sqrt(k), k = global / reference."""
        ratio = self.global_batch_size / self.reference_batch_size
        return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.rule]

    @property
    def target(self) -> float:
        """The rate after warm-up: what training runs at."""
        return self.base * self.factor

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Warm-up length in steps: the epochs rounded up to whole steps (0: no warm-up)."""
        if self.warmup_epochs <= 0:
            return 0
        return max(1, math.ceil(self.warmup_epochs * steps_per_epoch - 1e-9))

    def warmup_start(self, warmup_steps: int) -> float:
        """The rate of the first step of the warm-up.

        Goyal et al. start from the base rate, which is known to work at the reference batch, and
        ramp up to the scaled one. Where the rate is not scaled up (no scaling, or a batch no larger
        than the reference), there is nothing known-good below the target to start from: the ramp
        starts at target / steps, the usual linear warm-up from (almost) zero.
        """
        if self.target > self.base:
            return self.base
        return self.target / max(1, warmup_steps)

    def rate_at(self, step: int, steps_per_epoch: int) -> float:
        """The rate of the step taken after `step` steps (the optimizer's iteration count)."""
        warmup = self.warmup_steps(steps_per_epoch)
        if step >= warmup:
            return self.target
        start = self.warmup_start(warmup)
        return start + (self.target - start) * step / warmup

    def describe(self, steps_per_epoch: int | None = None) -> str:
        """One line for the plan: the rate in use and where it comes from."""
        origin = f"{self.optimizer}'s default" if self.from_default else "--learning-rate"
        if self.rule == "none":
            text = f"learning rate {self.target:g} ({origin})"
        else:
            how = f"{self.global_batch_size}/{self.reference_batch_size}"
            if self.rule == "sqrt":
                how = f"sqrt({how})"
            text = (
                f"learning rate {self.target:.6g} = {self.base:g} ({origin}) x {how} "
                f"(--scale-learning-rate {self.rule})"
            )
        if self.warmup_epochs > 0:
            if steps_per_epoch is None:
                start = f"{self.base:g}" if self.target > self.base else "near 0"
                text += f", reached by a linear warm-up over {self.warmup_epochs:g} epoch(s) from {start}"
            else:
                steps = self.warmup_steps(steps_per_epoch)
                text += (
                    f", reached by a linear warm-up over {self.warmup_epochs:g} epoch(s) ({steps} steps) "
                    f"from {self.warmup_start(steps):.6g}"
                )
        return text


def rate_plan(config: TrainConfig) -> RatePlan:
    return RatePlan(
        base=config.base_learning_rate,
        from_default=config.learning_rate is None,
        optimizer=config.optimizer,
        rule=config.scale_learning_rate,
        global_batch_size=config.global_batch_size,
        reference_batch_size=config.reference_batch_size,
        warmup_epochs=config.warmup_epochs,
    )

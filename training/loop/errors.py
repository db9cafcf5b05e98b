"""How a training run ends before its last epoch: divergence, or a stop by SIGINT/SIGTERM.

A module of their own so that the loop's pieces (state.py, signals.py, checkpoints/saving.py) raise
them without importing the trainer; `python -m training` catches them from here.
"""

from __future__ import annotations

import signal


class TrainingDiverged(RuntimeError):
    """The loss (or, at a checkpoint, a weight) became NaN or infinite."""

    def __init__(
        self,
        step: int,
        loss: float,
        last_checkpoint: str | None = None,
        what: str = "loss",
    ) -> None:
        if last_checkpoint:
            advice = (
                f"; the last good checkpoint, {last_checkpoint}, is kept: lower --learning-rate "
                "and run the same command again to resume from it"
            )
        else:
            advice = " (no checkpoint was kept; lower --learning-rate and run again)"
        super().__init__(f"{what} became {loss} at step {step}: training stopped{advice}")
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: the run stopped after a whole step and, with checkpoints, saved it."""

    def __init__(self, signum: int, global_step: int, checkpoint: str | None, at_once: bool = False) -> None:
        self.signum, self.global_step, self.checkpoint = signum, global_step, checkpoint
        self.at_once = at_once
        name = signal.Signals(signum).name
        if at_once:
            detail = f"stopped at once by a second {name} during global step {global_step + 1}"
            saved = f"; the last checkpoint is {checkpoint}" if checkpoint else ""
        else:
            detail = f"stopped by {name} after global step {global_step}"
            saved = f"; checkpoint {checkpoint} written" if checkpoint else ""
        super().__init__(detail + saved)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal

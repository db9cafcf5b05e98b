"""Stop a training run cleanly on SIGINT/SIGTERM: finish the step, checkpoint, then stop.

The first signal only sets a flag, which the loop reads after each step (and which makes that
step's checkpoint due); a second one raises TrainingInterrupted at once, from inside the step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from training.loop.errors import TrainingInterrupted

# (global steps trained so far, newest checkpoint): what a second signal's message reports
Position = Callable[[], tuple[int, str | None]]


class GracefulStop:
    """A context manager: installs the handlers on entry and puts the previous ones back on exit.

    Only in the main thread (Python delivers signals there, and `signal.signal` refuses elsewhere),
    and only with `install`: without it, `requested` stays False and nothing is touched.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, position: Position, install: bool = True) -> None:
        self.signum: int | None = None
        # on several workers: what the last agreement decided (None on one machine), see settle()
        self.settled: bool | None = None
        self._position = position
        self._install = install
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Stop at this step? On several workers, what they all agreed after the last call: a
        signal that arrives later counts at the next agreement, so that every worker stops after
        the same step."""
        if self.settled is not None:
            return self.settled
        return self.signum is not None

    @property
    def pending(self) -> bool:
        """A signal reached this process (what it brings to the next agreement)."""
        return self.signum is not None

    def settle(self, any_worker_stopping: bool) -> None:
        """The agreement's result: a peer's SIGTERM stops this worker too (reported as SIGTERM)."""
        self.settled = any_worker_stopping
        if any_worker_stopping and self.signum is None:
            self.signum = signal.SIGTERM

    def raise_if_requested(self, global_step: int, checkpoint: str | None) -> None:
        """Called after a whole step (and its checkpoint, if one was due): stop here if asked to."""
        if self.requested and self.signum is not None:
            raise TrainingInterrupted(self.signum, global_step, checkpoint)

    def __enter__(self) -> GracefulStop:
        if self._install and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            global_step, checkpoint = self._position()
            raise TrainingInterrupted(signum, global_step, checkpoint, at_once=True)
        self.signum = signum
        # os.write, not print: the handler may run while the main thread is inside a print
        os.write(
            2,
            f"\n{signal.Signals(signum).name}: stopping after this step "
            "(send it again to stop at once)\n".encode(),
        )

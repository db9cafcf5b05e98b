"""Stop a training run cleanly on SIGINT/SIGTERM: finish the step, checkpoint, then stop.

The first signal only sets a flag, which the loop reads after each step (and which makes that
step's checkpoint due); a second one raises TrainingInterrupted at once, from inside the step.
The run's RunState holds the GracefulStop of its fit call (training.loop.state).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from training.loop.errors import TrainingInterrupted
from training.loop.state import RunState


class GracefulStop:
    """A context manager: installs the handlers on entry and puts the previous ones back on exit.
    A first signal asks `run` to stop (RunState.stop_signal), which the loop acts on after the step.

    Only in the main thread (Python delivers signals there, and `signal.signal` refuses elsewhere),
    and only with `install`: without it, no signal is caught, though several workers can still
    agree to stop (settle).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run: RunState, install: bool = True) -> None:
        self.run = run
        self.signum: int | None = None
        # on several workers: what the last agreement decided (None on one machine), see settle()
        self.settled: bool | None = None
        self._install = install
        self._previous: dict[int, Any] = {}

    @property
    def pending(self) -> bool:
        """A signal reached this process (what it brings to the next agreement)."""
        return self.signum is not None

    def settle(self, any_worker_stopping: bool) -> None:
        """The agreement after a call: every worker stops after the same step, so the run stops
        here exactly when some worker got a signal; a peer's stop is reported as SIGTERM. A signal
        that arrives after the agreement counts at the next one."""
        self.settled = any_worker_stopping
        if any_worker_stopping and self.signum is None:
            self.signum = signal.SIGTERM
        self.run.stop_signal = self.signum if any_worker_stopping else None

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
            global_step, checkpoint = self.run.position()
            raise TrainingInterrupted(signum, global_step, checkpoint, at_once=True)
        self.signum = signum
        if self.settled is None:  # one machine: stop after this step; several: at the agreement
            self.run.stop_signal = signum
        # os.write, not print: the handler may run while the main thread is inside a print
        os.write(
            2,
            f"\n{signal.Signals(signum).name}: stopping after this step "
            "(send it again to stop at once)\n".encode(),
        )

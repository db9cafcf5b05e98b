"""The parent's side of the benchmark worker (`python -m training.children.worker`): start it on a
resolved device set, send typed requests, read typed answers (`training.children.protocol`). No
TensorFlow here: the sweep imports this.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.child import Child, ChildError, child_environment, module_command
from training.children.protocol import (
    Failed,
    Prepared,
    Ran,
    Ready,
    Request,
    StartFailed,
    Work,
    decode,
    decode_answer,
    encode,
)


class WorkerError(ChildError):
    """A request that did not succeed. kind: oom | error | crash | timeout | start, or lost (a
    worker of a cluster found a peer gone: training.devices.multiworker.lost_peer)."""


@dataclass
class WorkerClient:
    """Starts `python -m training.children.worker DEVICE_ARGS` (DevicePlan.child_args) and talks to it.

    A worker that dies is reported as kind "crash" (with the tail of its stderr), one that does not
    answer in time is killed and reported as "timeout"; neither is waited on forever.
    """

    device_args: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    start_timeout: float = 600.0
    child: Child | None = None
    ready: Ready | None = None
    start_seconds: float = 0.0
    _launched: float = 0.0

    @property
    def proc(self) -> Any:
        """The worker's process while it runs (None once closed)."""
        return self.child.proc if self.child is not None else None

    def start(self) -> Ready:
        self.launch()
        try:
            return self.ready_from(self._call(None, self.start_timeout, "start"))
        finally:
            self.start_seconds = time.perf_counter() - self._launched

    def launch(self) -> None:
        """Start the process; its "ready" is `poll`ed for (a group starts all its workers first:
        each waits for the others before it is ready)."""
        self._launched = time.perf_counter()
        command = module_command("training.children.worker", *self.device_args)
        self.child = Child(command, child_environment(self.env), self.log_path).start()

    def ready_from(self, message: dict[str, Any]) -> Ready:
        """The worker's first message: Ready, or a WorkerError(start) saying why it did not start."""
        if message.get("event") != "ready":
            self.close()
            failed = decode(StartFailed, message) if "message" in message else StartFailed(str(message))
            raise WorkerError("start", failed.message)
        self.ready = decode(Ready, message)
        return self.ready

    def prepare(self, work: Work, timeout: float, steps: int | None = None) -> Prepared:
        """Build and trace `work` (`steps`: how many a run will time, where that shapes the trace)."""
        answer = self._request(Request("prepare", work, steps), timeout)
        assert isinstance(answer, Prepared)
        return answer

    def run(self, work: Work, steps: int, timeout: float) -> Ran:
        answer = self._request(Request("run", work, steps), timeout)
        assert isinstance(answer, Ran)
        return answer

    def _request(self, request: Request, timeout: float) -> Prepared | Ran:
        return self.answer_from(request, self._call(encode(request), timeout, describe(request)))

    def send(self, request: Request) -> None:
        """Send a request without waiting for its answer (`poll` for it)."""
        if self.child is None:
            raise WorkerError("crash", "worker is not running")
        try:
            self.child.send(encode(request), describe(request))
        except ChildError as exc:
            raise WorkerError(exc.kind, f"worker {exc}") from None

    def poll(self, timeout: float, what: str) -> dict[str, Any] | None:
        """The worker's next message, None if none came within `timeout` (it keeps running)."""
        if self.child is None:
            raise WorkerError("crash", "worker is not running")
        try:
            return self.child.poll(timeout, what)
        except ChildError as exc:
            raise WorkerError(exc.kind, f"worker {exc}") from None

    @staticmethod
    def answer_from(request: Request, message: dict[str, Any]) -> Prepared | Ran:
        """The typed answer to `request`; a Failed one raises WorkerError of its kind."""
        answer = decode_answer(request, message)
        if isinstance(answer, Failed):
            raise WorkerError(answer.error, answer.message)
        return answer

    def _call(self, payload: dict[str, Any] | None, timeout: float, what: str) -> dict[str, Any]:
        if self.child is None:
            raise WorkerError("crash", "worker is not running")
        try:
            if payload is not None:
                self.child.send(payload, what)
            return self.child.receive(timeout, what)
        except ChildError as exc:
            raise WorkerError(exc.kind, f"worker {exc}") from None

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def close(self) -> None:
        """Ask the worker to quit and kill it if it is still there 0.2 s later."""
        if self.child is not None:
            self.child.close(encode(Request("quit")))
        self.child = None


def describe(request: Request) -> str:
    """'run train': what a request is, for messages."""
    return f"{request.cmd} {request.work.kind if request.work else ''}".strip()

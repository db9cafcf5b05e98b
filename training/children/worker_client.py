"""The parent's side of one benchmark worker process (`python -m training.children.worker`): start it
on a resolved device set, send typed requests, poll for typed answers (`training.children.protocol`).
`training.children.worker_group.WorkerGroup` asks one or several of them and waits on them
together; that is what the sweep and the tests use. No TensorFlow here: the sweep imports this.
"""

from __future__ import annotations

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

    A worker that dies is reported as kind "crash" (with the tail of its stderr); `poll` never waits
    past its timeout (the group kills a worker that does not answer in time: "timeout").
    """

    device_args: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    child: Child | None = None
    ready: Ready | None = None

    @property
    def proc(self) -> Any:
        """The worker's process while it runs (None once closed)."""
        return self.child.proc if self.child is not None else None

    def launch(self) -> None:
        """Start the process; its "ready" is `poll`ed for (a group starts all its workers first:
        each waits for the others before it is ready)."""
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

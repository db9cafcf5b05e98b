"""The parent's side of the benchmark worker (`python -m training.children.worker`): start it on a resolved
device set, send requests, read answers. No TensorFlow here: the sweep imports this.

Protocol (gpudiag-worker/1), one JSON object per line over `common.child`'s channel:

    worker -> {"event": "ready", "replicas": 2, "devices": [...], "tensorflow": "2.21.0", ...}
    parent -> {"cmd": "prepare", "kind": "train", "model": "cnn", "batch_per_replica": 32,
               "jit_compile": false, "mixed_precision": false}
    worker -> {"ok": true, "seconds": 3.1, "first_step_seconds": 1.9, "flops_per_sample": ...}
    parent -> {"cmd": "run", "kind": "train", "model": "cnn", "batch_per_replica": 32, "steps": 20}
    worker -> {"ok": true, "seconds": 0.84, "loss": 2.1}
    worker -> {"ok": false, "error": "oom" | "error", "message": "..."}   on failure

Kinds: "train" (k training steps of the Trainer for (model, batch, XLA, mixed precision); the
cross-device ops are the worker's `--cross-device-ops`, fixed with its strategy), "input" (k global batches
from the trainer's own tf.data pipeline, distributed to the replicas, no model), "allreduce" (k
chained all-reduces of a float32 message of `bytes` per replica). "prepare" builds and traces
(the compile cost the sweep does not count as benchmark work); "run" is what is timed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.child import Child, ChildError, child_environment, module_command

PROTOCOL = "gpudiag-worker/1"
KINDS = ("train", "input", "allreduce")
# All-reduces traced into one function call: amortises the strategy's per-call dispatch (about
# 0.8 ms on a 2-core CPU) over several, while keeping the tracing cost of each size small.
ALLREDUCE_UNROLL = 4


class WorkerError(ChildError):
    """A request that did not succeed. kind: oom | error | crash | timeout | start."""


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
    ready: dict[str, Any] | None = None
    start_seconds: float = 0.0

    @property
    def proc(self) -> Any:
        """The worker's process while it runs (None once closed)."""
        return self.child.proc if self.child is not None else None

    def start(self) -> dict[str, Any]:
        started = time.perf_counter()
        command = module_command("training.children.worker", *self.device_args)
        self.child = Child(command, child_environment(self.env), self.log_path).start()
        try:
            message = self._call(None, self.start_timeout, "start")
        finally:
            self.start_seconds = time.perf_counter() - started
        if message.get("event") != "ready":
            self.close()
            raise WorkerError("start", str(message.get("message", message)))
        self.ready = message
        return message

    def request(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        what = f"{payload.get('cmd')} {payload.get('kind', '')}".strip()
        answer = self._call(payload, timeout, what)
        if not answer.get("ok"):
            raise WorkerError(str(answer.get("error", "error")), str(answer.get("message", answer)))
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
            self.child.close({"cmd": "quit"})
        self.child = None

"""The benchmark workers of one sweep step: one process on one machine, or the tasks of a
MultiWorkerMirroredStrategy cluster that this machine runs (`--local-workers N`: all of them, on
localhost; `--cluster tf-config|slurm`: this node's one). Every request goes to every worker and is
answered by all: the collectives in the work pair up across them, so they run it in step. The
chief's answer (the first worker's) is the one recorded; its round time ends when the cluster's
last all-reduce of the round does.

Several workers are waited on together: a worker that fails or dies is seen at once, not after the
others time out waiting for it. In a cluster the others cannot go on without it (their next
collective would wait for it up to --collective-timeout), so the group is then of no further use:
every worker is stopped and the first failure is raised, naming the worker.

No TensorFlow here: the sweep imports this.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from training.children.protocol import Prepared, Ran, Ready, Request, Work
from training.children.worker_client import WorkerClient, WorkerError, describe

T = TypeVar("T")
POLL_S = 0.05  # how long one worker is waited on before the next is looked at


@dataclass(frozen=True)
class Launch:
    """One worker process: its arguments (devices, cluster) and what it adds to the environment."""

    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = "worker"  # for messages: "worker 1"


@dataclass
class WorkerGroup:
    """Starts the workers of `launches` together and asks each the same; one launch is the
    single-process sweep and behaves as a WorkerClient."""

    launches: Sequence[Launch]
    log_dir: Path
    log_name: str
    start_timeout: float = 600.0
    clients: list[WorkerClient] = field(default_factory=list)
    start_seconds: float = 0.0

    @property
    def proc(self) -> Any:
        """The chief's process while the group runs (None once closed)."""
        return self.clients[0].proc if self.clients else None

    def start(self) -> Ready:
        """Start every worker, then wait for all to be ready (MultiWorkerMirroredStrategy waits for
        every peer before it answers); the chief's Ready."""
        started = time.perf_counter()
        several = len(self.launches) > 1
        for index, launch in enumerate(self.launches):
            suffix = f"-{index}" if several else ""
            env = {**os.environ, **launch.env} if launch.env else None  # None: this process's own
            client = WorkerClient(launch.args, self.log_dir / f"{self.log_name}{suffix}.log", env)
            self.clients.append(client)
            client.launch()
        try:
            return self._gather("start", self.start_timeout, lambda client, m: client.ready_from(m))[0]
        except WorkerError:
            self.close()
            raise
        finally:
            self.start_seconds = time.perf_counter() - started

    def prepare(self, work: Work, timeout: float, steps: int | None = None) -> Prepared:
        answer = self._request(Request("prepare", work, steps), timeout)
        assert isinstance(answer, Prepared)
        return answer

    def run(self, work: Work, steps: int, timeout: float) -> Ran:
        answer = self._request(Request("run", work, steps), timeout)
        assert isinstance(answer, Ran)
        return answer

    def _request(self, request: Request, timeout: float) -> Prepared | Ran:
        try:
            for client in self.clients:
                client.send(request)
        except WorkerError as exc:
            raise self._failed(0, exc) from None
        answers = self._gather(describe(request), timeout, lambda _c, m: WorkerClient.answer_from(request, m))
        return answers[0]

    def _gather(
        self, what: str, timeout: float, read: Callable[[WorkerClient, dict[str, Any]], T]
    ) -> list[T]:
        """Every worker's answer, read by `read`, in launch order. The first failure (a Failed answer,
        a worker gone, the deadline) raises; with several workers it stops them all first."""
        deadline = time.monotonic() + timeout
        found: dict[int, T] = {}
        while len(found) < len(self.clients):
            for index, client in enumerate(self.clients):
                if index in found:
                    continue
                try:
                    message = client.poll(POLL_S if len(self.clients) > 1 else timeout, what)
                    if message is not None:
                        found[index] = read(client, message)
                except WorkerError as exc:
                    raise self._failed(index, exc) from None
            if len(found) < len(self.clients) and time.monotonic() > deadline:
                late = next(i for i in range(len(self.clients)) if i not in found)
                self.clients[late].kill()
                error = WorkerError(
                    "timeout", f"worker did not answer {what} within {timeout:g} s: killed it"
                )
                raise self._failed(late, error)
        return [found[i] for i in range(len(self.clients))]

    def _failed(self, index: int, exc: WorkerError) -> WorkerError:
        """The failure to raise: as it is on one worker; with several, named, and every worker stopped."""
        if len(self.clients) == 1:
            return exc
        self.close()
        return WorkerError(exc.kind, f"{self.launches[index].name}: {exc}")

    def kill(self) -> None:
        for client in self.clients:
            client.kill()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients = []

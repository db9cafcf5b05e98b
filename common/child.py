"""Child processes for the work that needs a TensorFlow of its own: the `--deep` probe, the sweep's
workers, the `--auto-batch-size` tries. TensorFlow fixes its devices when it starts and never gives
GPU memory back, so each of these runs in a fresh process; this module is the one way to start
one, talk to it and judge how it ended. It never imports TensorFlow.

The channel: the child writes one JSON object per line on its stdout (`open_channel` sets that up:
TensorFlow prints to fd 1 from C++, so fd 1 is pointed at stderr and the channel keeps a private
copy of the real stdout); the parent may write JSON lines on the child's stdin. The child's stderr
goes to a log file, whose last lines explain a crash. Every read has a timeout; a child that
overruns it is killed with its whole process group, so nothing it started is left behind.

How a child ended is one of: ok, oom (out of memory, however TensorFlow or CUDA said it), crash,
timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
# How TensorFlow and CUDA say "out of memory": tf.errors.ResourceExhaustedError, and an
# InternalError or a crash carrying CUDA's or the allocator's words.
_OOM = re.compile(r"ResourceExhausted|out of memory|OUT_OF_MEMORY|OOM when allocating", re.IGNORECASE)
# TensorFlow's start-up log lines (absl INFO/WARNING), which would crowd the reason out of a crash report
_TF_CHATTER = re.compile(r"^([IW]\d{4} |WARNING: All log messages before absl)|oneDNN custom operations")
OK, OOM, CRASH, TIMEOUT = "ok", "oom", "crash", "timeout"


def is_out_of_memory(error: BaseException | str) -> bool:
    """True for an out-of-memory error, given as the exception or as the text a child printed."""
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {getattr(error, 'message', None) or error}"
    return bool(_OOM.search(error))


# The lines of a TensorFlow error that say where, not what ("Graph execution error:", the Python
# stack of the node, the node's name, a hint about allocation reports).
_WHERE_NOT_WHAT = re.compile(r"^(Graph execution error:|Detected at node|File \"|\[\[|Hint: |\[Op:)")


def first_line(error: BaseException) -> str:
    """An exception's message in one line, at most 500 characters: for TensorFlow's, which run to
    pages, the first line that says what went wrong ("OOM when allocating tensor ...")."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    what = [line for line in lines if not _WHERE_NOT_WHAT.match(line)]
    return (what or lines or [type(error).__name__])[0][:500]


def child_environment(env: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child: the project importable, output unbuffered, TF's INFO lines off."""
    out = dict(os.environ if env is None else env)
    out.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out["PYTHONUNBUFFERED"] = "1"
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    out.update(extra)
    return out


def module_command(module: str, *args: str) -> list[str]:
    """`python -m module ARGS` with this interpreter: a child is started by name, never imported."""
    return [sys.executable, "-m", module, *args]


class ChildError(RuntimeError):
    """A child that did not answer as asked. kind: oom | crash | timeout | error (it said it failed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- the parent's side ---------------------------------------------------------------------------


@dataclass
class Child:
    """A running child with a JSON-line channel; `start()` it, then `send` / `receive`, `close`."""

    command: Sequence[str]
    env: dict[str, str] = field(default_factory=child_environment)
    log_path: Path | None = None  # the child's stderr; a temporary file when None
    proc: subprocess.Popen[str] | None = None

    def start(self) -> Child:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="gpudiag-child-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (lives as long as the child)
        self.proc = subprocess.Popen(
            list(self.command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=self.env,
            bufsize=1,
            start_new_session=True,  # its own process group: a kill reaches what it started too
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        return self

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, message: Mapping[str, Any], what: str = "") -> None:
        if self.proc is None or self.proc.stdin is None or not self.running:
            raise ChildError(CRASH, "the child is not running")
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._ended(f"before {what or 'a request'}") from None

    def receive(self, timeout: float, what: str) -> dict[str, Any]:
        """The next JSON object from the child; kills it and raises ChildError(timeout) at the
        deadline, raises ChildError(crash or oom) if it exits first."""
        message = self.poll(timeout, what)
        if message is None:
            self.kill()
            raise ChildError(TIMEOUT, f"did not answer {what} within {timeout:g} s: killed it")
        return message

    def poll(self, timeout: float, what: str) -> dict[str, Any] | None:
        """The next JSON object from the child, or None if none came within `timeout` (the child
        is left running: a parent waiting on several children polls each in turn); raises
        ChildError(crash or oom) if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return None
            if line is None:
                raise self._ended(f"during {what}")
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # stray output on the channel: not a message
            if isinstance(message, dict):
                return message

    def messages(self, timeout: float) -> tuple[list[dict[str, Any]], bool]:
        """Every message until the child exits: (messages, timed_out). At the deadline the child is
        killed; what it said until then is kept."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while True:
            try:
                found.append(self.receive(max(deadline - time.monotonic(), 0.0), "in time"))
            except ChildError as exc:
                return found, exc.kind == TIMEOUT

    def _ended(self, when: str) -> ChildError:
        code = self.wait(10)
        tail = self.stderr_tail()
        kind = OOM if is_out_of_memory(tail) else CRASH
        return ChildError(kind, f"exited with code {code} {when}{': ' + tail if tail else ''}")

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def stderr_lines(self, lines: int = 5) -> list[str]:
        """The child's last stderr lines, TensorFlow's start-up chatter left out."""
        with contextlib.suppress(OSError, AttributeError):
            self._log.flush()
            assert self.log_path is not None
            text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            return [t.strip() for t in text if t.strip() and not _TF_CHATTER.match(t)][-lines:]
        return []

    def stderr_tail(self, lines: int = 5) -> str:
        """stderr_lines in one line, for a message."""
        return " | ".join(self.stderr_lines(lines))[-800:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def close(self, quit_message: Mapping[str, Any] | None = None, grace: float = 0.2) -> None:
        """Ask the child to quit (if given a message), kill it after `grace` seconds.

        A child keeps nothing worth a clean exit, and TensorFlow's interpreter shutdown takes
        seconds (about 6 s on 2 CPU cores) that a parent would otherwise wait out each time.
        """
        if self.proc is None:
            return
        if self.running and self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                if quit_message is not None:
                    self.proc.stdin.write(json.dumps(quit_message) + "\n")
                    self.proc.stdin.flush()
                self.proc.stdin.close()
            self.wait(grace)
        self.kill()
        with contextlib.suppress(OSError, AttributeError):
            self._log.close()


@dataclass
class Outcome:
    """How a child run to completion ended."""

    kind: str  # ok | oom | crash | timeout
    returncode: int | None
    messages: list[dict[str, Any]]
    stderr_lines: list[str]  # the last few, TensorFlow's start-up chatter left out
    seconds: float


def run(
    command: Sequence[str], timeout: float, env: dict[str, str] | None = None, oom_exit: int | None = None
) -> Outcome:
    """Run a child to its end (or kill it at `timeout`) and classify how it ended. A child that
    exits with `oom_exit`, or whose stderr reports out of memory, ended in "oom"."""
    started = time.monotonic()
    child = Child(command, env if env is not None else child_environment()).start()
    try:
        child.proc.stdin.close()  # type: ignore[union-attr]  # nothing to send
        messages, timed_out = child.messages(timeout)
        code = child.wait(max(started + timeout - time.monotonic(), 0.1)) if not timed_out else None
        tail = child.stderr_lines()
    finally:
        child.close()
        if child.log_path is not None:
            child.log_path.unlink(missing_ok=True)
    if timed_out or code is None:
        kind = TIMEOUT
    elif code == 0:
        kind = OK
    elif code == oom_exit or is_out_of_memory("\n".join(tail)):
        kind = OOM
    else:
        kind = CRASH
    return Outcome(kind, code, messages, tail, time.monotonic() - started)


# -- the child's side ----------------------------------------------------------------------------


class Channel:
    """The child's end: `send` writes one JSON object per line to the parent."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def send(self, message: Mapping[str, Any]) -> None:
        self._stream.write(json.dumps(message) + "\n")
        self._stream.flush()


def open_channel() -> Channel:
    """In the child, before TensorFlow is imported: keep the real stdout for the channel and point
    fd 1 (TensorFlow's C++ output, Keras' progress) and sys.stdout at stderr."""
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return Channel(stream)

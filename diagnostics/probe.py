"""Starting the --deep checks, which must run TensorFlow: `strategy`, `gpu-smoke` and
`replica-consistency`.

This side (`run_probe`, used by gpudiag check --deep) never imports TensorFlow, nor the trainer: it
starts the trainer's entry point `python -m training.children.probe` by name, hands it the GPUs gpudiag
selected (or a number of CPU logical devices), and reads one JSON line per event from the child
(`common.child`). The child sets up those devices with the trainer's own `setup_device_strategy`,
so it tests exactly what training uses. A child that hangs (a PTX JIT compile, an NCCL
all-reduce) is killed with its process group at the timeout and reported as such, with the last
lines of its stderr: NCCL's own log, as the child runs with NCCL_DEBUG=INFO unless told otherwise.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import child
from diagnostics.inventory import Gpu
from diagnostics.selection import device_args

PROBE_MODULE = "training.children.probe"
DEEP_CHECKS = ("strategy", "gpu-smoke", "replica-consistency")
# A self-test hook (training.children.probe.injected): makes a deep check see a fault of a given
# size, to prove it is caught. Not for users.
INJECT_ENV = "GPUDIAG_PROBE_INJECT"
# A deep check fails above this relative difference. float32 sums in another order differ by about
# 1e-6 (measured: 2e-7 to 2e-6 on CPU replicas); a broken reduction or a faulty GPU by far more.
RELATIVE_TOLERANCE = 1e-4
# The all-reduce replica-consistency starts with: small, so that only a hang takes time.
ALLREDUCE_FLOATS = 1024
# How much of the child's stderr a hung or crashed probe keeps: NCCL writes a few lines per channel
# and peer, and the last ones name the transport it was setting up when it stopped.
LOG_TAIL_LINES = 20


# -- parent side (no TensorFlow) ----------------------------------------------------------------------


@dataclass
class ProbeResult:
    findings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    current: str | None = None  # last "start" event without a finding after it
    detail: str = ""  # what the child was doing, for a timeout message
    stage: str = ""  # which part of the current check ("allreduce"), where the child says
    timed_out: bool = False
    returncode: int | None = None
    stderr_tail: str = ""
    log_tail: list[str] = field(default_factory=list)  # the child's last stderr lines (NCCL's log)
    seconds: float = 0.0
    rerun: str = ""  # the child's command line, for a user to run by hand


def probe_command(gpus: Sequence[Gpu] = (), cpu_replicas: int | None = None) -> list[str]:
    """The child's command line: the resolved devices, never the selection flags to select again."""
    return child.module_command(PROBE_MODULE, *device_args(gpus, cpu_replicas))


def probe_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: NCCL logs what it sets up (NCCL_DEBUG=INFO) unless the user chose."""
    out = child.child_environment(env)
    out.setdefault("NCCL_DEBUG", "INFO")
    return out


def run_probe(command: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None) -> ProbeResult:
    """Run the child, kill its whole process group at the timeout, and parse what it said.

    common.child.run keeps 5 lines of stderr; a hung all-reduce needs more of NCCL's log, so the
    child is run here with common.child's own Child, the same way.
    """
    started = time.monotonic()
    proc = child.Child(command, probe_environment(env)).start()
    try:
        proc.proc.stdin.close()  # type: ignore[union-attr]  # nothing to send
        messages, timed_out = proc.messages(timeout_s)
        code = None if timed_out else proc.wait(max(started + timeout_s - time.monotonic(), 0.1))
        lines = proc.stderr_lines(LOG_TAIL_LINES)
    finally:
        proc.close()
        if proc.log_path is not None:
            proc.log_path.unlink(missing_ok=True)
    result = ProbeResult(
        timed_out=timed_out or code is None,
        returncode=code,
        stderr_tail="\n".join(lines[-5:]),
        log_tail=lines,
        seconds=time.monotonic() - started,
        rerun=shlex.join(["python", *command[1:]]),
    )
    for event in messages:
        if event.get("event") == "start":
            result.started.append(event["check"])
            result.current, result.detail = event["check"], event.get("detail", "")
            result.stage = event.get("stage", "")
        elif event.get("event") == "finding":
            result.findings.setdefault(event["check"], []).append(event)
            if result.current == event["check"] and event.get("final", True):
                result.current = None
    return result

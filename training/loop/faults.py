"""Fault injection for the trainer, in one place: out-of-memory, NaN, slow steps and kills on purpose.

Real out-of-memory, divergence and preemption cannot be produced safely or on time on a test
machine, so the tests make them happen here instead, as DCGM tests its diagnostics. Set

    GPUDIAG_FAULT="oom_above_batch=64,nan_at_step=7,sleep_per_step=0.2,kill_after_step=12,
                   kill_during_checkpoint=2"

- oom_above_batch=N: a training step whose per-replica batch is above N raises
  tf.errors.ResourceExhaustedError, as a GPU that runs out of memory does.
- nan_at_step=N: global step N (counted from 1 over the whole run) reports a NaN loss.
- nan_weights_at_step=N: the weights a checkpoint after global step N would save hold a NaN (an
  update that overflowed after its loss was computed).
- sleep_per_step=S: each step takes S seconds longer (so that a test can kill a run mid-epoch).
- kill_after_step=N: SIGKILL this process right after global step N and any checkpoint it writes.
- kill_during_checkpoint=N: SIGKILL this process halfway through writing its Nth checkpoint file.
- slow_compute=F: this worker's solo timing of its forward and backward pass at the end of the run
  (training.app.workers_speed) waits F - 1 times the compute it just did after each pass: the
  passes take F times as long, as on a slower machine (the training steps are not slowed).
- allreduce-hang (no value): `gpudiag check --deep`'s child blocks in its all-reduce, so that the
  parent's deadline and its report of a hung all-reduce can be seen; the trainer ignores it.

Unset (the normal case) this costs one environment lookup per run: `from_env()` returns None and
the trainer skips every hook.

The benchmark worker (training/worker.py) takes its faults from GPUDIAG_WORKER_FAULT, at the end
of this module: they fail a whole benchmark configuration (out of memory, a crash, a hang) rather
than one step of a run.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError

FAULT_ENV = "GPUDIAG_FAULT"
WORKER_FAULT_ENV = "GPUDIAG_WORKER_FAULT"
CRASH_EXIT_CODE = 70  # an injected worker crash exits with this


class FaultSpecError(UserError):
    """GPUDIAG_FAULT cannot be parsed (a user error: one line, exit 2)."""


@dataclass
class Faults:
    oom_above_batch: int | None = None
    nan_at_step: int | None = None
    sleep_per_step: float | None = None
    kill_after_step: int | None = None
    kill_during_checkpoint: int | None = None
    nan_weights_at_step: int | None = None
    slow_compute: float | None = None
    checkpoints_started: int = 0  # state, not configuration

    # -- hooks called by the trainer; each one is a no-op unless its fault is set ------------------

    def before_step(self, global_step: int, per_replica_batch: int) -> None:
        if self.sleep_per_step:
            time.sleep(self.sleep_per_step)
        if self.oom_above_batch is not None and per_replica_batch > self.oom_above_batch:
            import tensorflow as tf

            raise tf.errors.ResourceExhaustedError(
                None,
                None,
                f"OOM when allocating tensor for a per-replica batch of {per_replica_batch} "
                f"(injected by {FAULT_ENV}: oom_above_batch={self.oom_above_batch})",
            )

    def loss_after_step(self, global_step: int, loss: float) -> float:
        return float("nan") if global_step == self.nan_at_step else loss

    def weights_to_save(self, global_step: int, arrays: Sequence[Any]) -> Sequence[Any]:
        """Called with the arrays a checkpoint is about to save, before they are checked."""
        if global_step != self.nan_weights_at_step or not arrays:
            return arrays
        import numpy as np

        poisoned = np.array(arrays[0], dtype=np.float32, copy=True)
        poisoned.flat[0] = np.nan
        return [poisoned, *arrays[1:]]

    def after_compute(self, seconds: float) -> None:
        """Called after `seconds` of this worker's own compute: with slow_compute=F, wait F - 1 times
        as long, so the compute (as the worker's peers and its own timer see it) takes F times as long."""
        if self.slow_compute and self.slow_compute > 1:
            time.sleep((self.slow_compute - 1) * seconds)

    def after_step(self, global_step: int) -> None:
        """Called after the step and after any checkpoint written for it."""
        if global_step == self.kill_after_step:
            _kill_self()

    def during_checkpoint_write(self, partial_file: Path) -> None:
        """Called with the temporary file of a checkpoint before it is flushed and renamed."""
        self.checkpoints_started += 1
        if self.checkpoints_started == self.kill_during_checkpoint:
            # what a kill mid-write leaves: a temporary file with half its bytes
            size = partial_file.stat().st_size
            with open(partial_file, "r+b") as handle:
                handle.truncate(size // 2)
            _kill_self()


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL is delivered at once; never run on past it


_INT_FIELDS = {
    "oom_above_batch",
    "nan_at_step",
    "kill_after_step",
    "kill_during_checkpoint",
    "nan_weights_at_step",
}
_FLOAT_FIELDS = {"sleep_per_step", "slow_compute"}
# Faults without a value, for the other children that read GPUDIAG_FAULT (`probe_fault`)
PROBE_FAULTS = {"allreduce-hang"}


def parse(text: str) -> Faults:
    """Parse "key=value,key=value"; unknown keys and bad values are a FaultSpecError."""
    faults = Faults()
    known = sorted(_INT_FIELDS | _FLOAT_FIELDS)
    for item in text.replace(" ", "").split(","):
        if not item or item in PROBE_FAULTS:
            continue
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise FaultSpecError(
                f"{FAULT_ENV}: cannot parse {item!r} (expected key=value with key one of {', '.join(known)})"
            )
        try:
            number: float = int(value) if key in _INT_FIELDS else float(value)
        except ValueError:
            raise FaultSpecError(f"{FAULT_ENV}: {key} needs a number, got {value!r}") from None
        if number < 0 or number != number:  # negative or NaN
            raise FaultSpecError(f"{FAULT_ENV}: {key} must be >= 0, got {value!r}")
        setattr(faults, key, number)
    return faults


def from_env(environ: dict[str, str] | None = None) -> Faults | None:
    """The faults asked for in GPUDIAG_FAULT, or None when it is unset or empty (the normal case)."""
    text = (os.environ if environ is None else environ).get(FAULT_ENV, "")
    if not text.strip():
        return None
    faults = parse(text)
    configured = any(getattr(faults, name) is not None for name in _INT_FIELDS | _FLOAT_FIELDS)
    return faults if configured else None


def probe_fault(name: str, environ: dict[str, str] | None = None) -> bool:
    """True when GPUDIAG_FAULT names the value-less fault `name` (one of PROBE_FAULTS)."""
    text = (os.environ if environ is None else environ).get(FAULT_ENV, "")
    return name in PROBE_FAULTS and name in text.replace(" ", "").split(",")


# -- the benchmark worker's faults ------------------------------------------------------------------
#
# GPUDIAG_WORKER_FAULT="oom:16,crash:32@2,hang:48" makes the worker fail on purpose when it is asked
# to prepare or run training at that batch per replica (on that many replicas, if @N is given), so
# the sweep's handling of out-of-memory, crashed and hung workers is testable on a CPU. "#T" aims a
# fault at task T of a cluster alone ("crash:32#1": worker 1 dies, its peers see a lost worker).


@dataclass(frozen=True)
class WorkerFault:
    kind: str  # oom | crash | hang
    batch_per_replica: int
    replicas: int | None = None


def parse_worker_faults(text: str | None, task_index: int = 0) -> list[WorkerFault]:
    """The faults of this worker (task `task_index` of its cluster; 0 on one machine)."""
    faults = []
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        fault, _, task = item.partition("#")
        kind, _, rest = fault.partition(":")
        batch, _, replicas = rest.partition("@")
        if (
            kind not in ("oom", "crash", "hang")
            or not batch.isdigit()
            or (replicas and not replicas.isdigit())
            or (task and not task.isdigit())
        ):
            raise ValueError(
                f"{WORKER_FAULT_ENV}: cannot parse {item!r} (expected oom|crash|hang:BATCH[@REPLICAS][#TASK])"
            )
        if not task or int(task) == task_index:
            faults.append(WorkerFault(kind, int(batch), int(replicas) if replicas else None))
    return faults


def worker_fault_for(
    faults: Sequence[WorkerFault], batch_per_replica: int, replicas: int
) -> WorkerFault | None:
    return next(
        (f for f in faults if f.batch_per_replica == batch_per_replica and f.replicas in (None, replicas)),
        None,
    )


def inject_worker_fault(fault: WorkerFault, tf: Any) -> None:
    if fault.kind == "oom":
        raise tf.errors.ResourceExhaustedError(
            None, None, f"OOM when allocating tensor (injected by {WORKER_FAULT_ENV})"
        )
    if fault.kind == "crash":
        os._exit(CRASH_EXIT_CODE)  # no cleanup, no answer: what a segfault looks like to the parent
    while True:  # hang: never answer
        time.sleep(3600)

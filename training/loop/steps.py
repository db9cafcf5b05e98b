"""Several training steps per traced call (`--steps-per-execution {auto,K}`).

One `tf.function` runs up to K global steps on the devices (a `tf.range` loop around
`strategy.run`) and returns every step's [loss, correct predictions] in one tensor: one host fetch
per K steps instead of one per step. The host round trip per step (and, on GPUs, the launch gap
it leaves) is what this saves: on 2 CPU replicas the MLP ran 1.34x faster at 20 steps per call.

Keras' own `compile(steps_per_execution=k)` fails under MirroredStrategy with 2+ replicas ("You
must feed a value for placeholder tensor"): its optimizer creates its slots inside the traced
loop. This loop creates nothing there: the caller builds the optimizer before tracing.

Exactness at chunk boundaries:
- a step whose loss is not finite ends the loop on the device: the chunk comes back shorter, its
  last row is the bad step, and no step after it has run (the weights are those K=1 would have);
- the caller cuts chunks at the epoch's end and at every step checkpoint (`chunk_steps`), so a
  checkpoint is written after exactly the step it names, and the input stream is where K=1 would
  have left it;
- the caller replays every step's logs to the progress bar and callbacks after the chunk:
  `on_train_batch_begin/end` still see every step, in order, but after the chunk ran; a callback
  that sets `model.stop_training`, and SIGINT/SIGTERM, take effect at the end of the chunk.

The choice of K (`AutoSteps`, `chunk_steps`) is pure Python; TensorFlow is imported only by
`make_multi_step`, so flag parsing does not start it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from training.loop.state import RunState
from training.settings.checks import AUTO, MAX_STEPS, parse_steps_per_execution

# auto: a host sync about every TARGET_SECONDS of training, kept between LOW and HIGH seconds: the
# progress bar moves (and a signal is answered) at least every HIGH seconds
TARGET_SECONDS = 0.15
LOW_SECONDS = 0.05
HIGH_SECONDS = 0.2


def chunk_steps(
    k: int,
    step_in_epoch: int,
    steps_per_epoch: int,
    global_step: int,
    save_every_steps: int | None,
    cut_after: Iterable[int | None] = (),
) -> int:
    """Steps in the next traced call: K, cut at the end of the epoch, at the next step checkpoint
    (`--save-freq N` saves after global steps N, 2N, ...) and after any global step in `cut_after`
    (the steps GPUDIAG_FAULT acts after), never fewer than 1."""
    steps = min(k, steps_per_epoch - step_in_epoch)
    if save_every_steps:
        steps = min(steps, save_every_steps - global_step % save_every_steps)
    for cut in cut_after:
        if cut is not None and cut > global_step:
            steps = min(steps, cut - global_step)
    return max(1, steps)


@dataclass
class AutoSteps:
    """`--steps-per-execution auto`: K from the measured time per step, so that one traced call
    takes about TARGET_SECONDS, re-chosen whenever a call falls outside [LOW_SECONDS, HIGH_SECONDS].

    Starts at K=1. The first call traces the function and is not a measurement; the next calls'
    time per step sets K. `limit` caps it (the epoch length: a call never spans two epochs).
    """

    limit: int = MAX_STEPS
    k: int = 1
    calls: int = 0
    seconds_per_step: float | None = None

    def next_k(self) -> int:
        return max(1, min(self.k, self.limit, MAX_STEPS))

    def observe(self, steps: int, seconds: float) -> None:
        """One traced call ran `steps` steps in `seconds` (ending on its host fetch)."""
        self.calls += 1
        if self.calls == 1 or steps <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return  # the first call traces: its time says nothing about the steady state
        self.seconds_per_step = seconds / steps
        # a call cut short (epoch end, checkpoint) still measures the time per step
        if not LOW_SECONDS <= self.seconds_per_step * self.k <= HIGH_SECONDS:
            self.k = choose_k(self.seconds_per_step, self.limit)


def choose_k(seconds_per_step: float, limit: int = MAX_STEPS) -> int:
    """The K that makes one call take about TARGET_SECONDS, within [1, min(limit, MAX_STEPS)]."""
    if seconds_per_step <= 0 or not math.isfinite(seconds_per_step):
        return 1
    return max(1, min(round(TARGET_SECONDS / seconds_per_step), limit, MAX_STEPS))


class StepsPerExecution:
    """What the training loop asks before each call: how many steps it runs. A fixed K, or AutoSteps
    (`steps_per_epoch` caps it; `chunk_steps` ends every call at the epoch's end in any case)."""

    def __init__(self, setting: int | str, steps_per_epoch: int = MAX_STEPS) -> None:
        self.setting = parse_steps_per_execution(setting)
        self.auto = AutoSteps(limit=steps_per_epoch) if self.setting == AUTO else None
        # on several workers, the chief's K, which every worker must use (the calls' collectives
        # pair up step for step); None on one machine
        self.agreed: int | None = None

    def proposed(self) -> int:
        """The K this process would choose (what the chief offers at an agreement)."""
        return self.auto.next_k() if self.auto is not None else int(self.setting)

    def describe(self) -> str:
        """'auto (K=17 last)' or '20': what the summary reports."""
        if self.auto is None:
            return str(self.setting)
        return f"auto (K={self.auto.next_k()} last)"

    def next_chunk(
        self,
        step_in_epoch: int,
        steps_per_epoch: int,
        global_step: int,
        save_every_steps: int | None,
        cut_after: Iterable[int | None] = (),
    ) -> int:
        k = self.agreed if self.agreed is not None else self.proposed()
        return chunk_steps(k, step_in_epoch, steps_per_epoch, global_step, save_every_steps, cut_after)

    def observe(self, steps: int, seconds: float) -> None:
        if self.auto is not None:
            self.auto.observe(steps, seconds)


# -- the traced function ------------------------------------------------------------------------


def make_multi_step(strategy: Any, replica_step: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """A `tf.function(iterator, k)` that runs up to k global steps and returns a [n, 2] float32
    tensor: row i is step i's [loss, correct predictions], each summed over the replicas.

    `replica_step(x, y)` runs in each replica and returns a float32 [loss, correct] vector (the
    loss already divided by the global batch). n == k unless a step's loss was not finite: the loop
    stops after that step, which is the last row. k is a tensor argument: changing it does not
    trace again.
    """
    import tensorflow as tf

    @tf.function
    def multi_step(iterator: Any, k: Any) -> Any:
        rows = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[2])
        for i in tf.range(k):
            x, y = next(iterator)
            per_replica = strategy.run(replica_step, args=(x, y))
            row = tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None), tf.float32)
            rows = rows.write(i, row)
            if not tf.math.is_finite(row[0]):
                break  # the devices stop at the bad step, as one step per call would
        return rows.stack()

    return multi_step


def run_chunk(multi_step: Callable[[Any, Any], Any], iterator: Any, steps: int) -> list[tuple[float, float]]:
    """One call of `steps` steps and its one host fetch: every step's (loss, correct)."""
    import tensorflow as tf

    rows = multi_step(iterator, tf.constant(steps, tf.int32)).numpy()
    return [(float(loss), float(correct)) for loss, correct in rows]


def run_steps(
    multi_step: Callable[[Any, Any], Any],
    iterator: Any,
    steps: int,
    spe: StepsPerExecution,
    agree: Callable[[bool, int], tuple[bool, int]] | None = None,
) -> tuple[float, int]:
    """`steps` steps in calls of `spe`'s K, each ending on its host fetch, as the trainer's loop
    runs them without callbacks (the benchmark worker's timed work): the last loss and the calls.
    On several workers `agree` (the trainer's Agreement) hands every worker the chief's K after each
    call, as in training: the calls' collectives must pair up."""
    done, calls, loss = 0, 0, float("nan")
    while done < steps:
        k = spe.next_chunk(done, steps, done, None)
        started = time.perf_counter()
        rows = run_chunk(multi_step, iterator, k)
        spe.observe(len(rows), time.perf_counter() - started)
        if agree is not None:
            _, spe.agreed = agree(False, spe.proposed())
        done, calls, loss = done + len(rows), calls + 1, rows[-1][0]
        if not math.isfinite(loss):
            break  # the steps after a non-finite loss would not have run in training either
    return loss, calls


def first_non_finite(losses: list[float]) -> int | None:
    """The 0-based index of the first loss that is not finite, or None."""
    return next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)


# -- --profile-steps ----------------------------------------------------------------------------


@dataclass
class ProfileRange:
    """A TensorBoard profile of global steps `first` to `last` (both included) under `logdir`.

    The trainer's calls are cut before `first` and after `last` (`cuts`), so the profiler starts
    and stops between traced calls and records exactly those steps. Every worker cuts its calls
    there (the calls' collectives pair up), but only where `record` is set (the chief) does the
    profiler run: workers on one host would write the same files.
    """

    first: int
    last: int
    logdir: str
    record: bool = True
    active: bool = False
    trace_dir: str | None = None  # logdir/plugins/profile/<timestamp>, once stopped
    _before: set[str] = field(default_factory=set, repr=False)  # the runs there before this one

    def cuts(self) -> tuple[int, int]:
        """The global steps a call must end after: the one before the range, and its last."""
        return self.first - 1, self.last

    def covers(self, global_step: int) -> bool:
        return self.first <= global_step <= self.last

    def _runs(self) -> set[str]:
        import os

        folder = os.path.join(self.logdir, "plugins", "profile")
        return set(os.listdir(folder)) if os.path.isdir(folder) else set()

    def start(self) -> None:
        if not self.record or self.active:
            return
        import tensorflow as tf

        self._before = self._runs()
        tf.profiler.experimental.start(self.logdir)
        self.active = True

    def stop(self) -> None:
        """End the profile (if it runs) and find the folder it wrote."""
        if not self.active:
            return
        import os

        import tensorflow as tf

        tf.profiler.experimental.stop()
        self.active = False
        new = sorted(self._runs() - self._before)
        if new:
            self.trace_dir = os.path.join(self.logdir, "plugins", "profile", new[-1])


# -- what the trainer's loop calls ------------------------------------------------------------------


class ChunkRunner:
    """The trainer's side of several steps per call: runs a chunk (`run`), then hands each step's
    logs to the callbacks in order (`replay`). Holds the traced function, K's choice and the fault
    hooks (GPUDIAG_FAULT: `faults`, None normally), so that the loop in trainer.py reads as one step
    at a time with one step replaced by one chunk.
    """

    def __init__(
        self,
        strategy: Any,
        replica_step: Callable[..., Any],
        setting: int | str,
        per_replica_batch: int,
        faults: Any = None,
    ) -> None:
        """Build it once per Trainer: the function traces at its first call only, and `auto` keeps
        the K it measured from one `fit` call to the next."""
        self.multi_step = make_multi_step(strategy, replica_step)
        self.spe = StepsPerExecution(setting)
        self.per_replica_batch, self.faults = per_replica_batch, faults
        # the first call traces (and on GPUs compiles): reported apart from the steady state
        self.first_call: tuple[int, float] | None = None  # (steps, seconds)
        self.profile: ProfileRange | None = None  # --profile-steps, set by Trainer.fit

    def run(
        self, iterator: Any, state: RunState, steps_per_epoch: int, save_every_steps: int | None
    ) -> list[tuple[float, float]]:
        """Run the next chunk from where `state` stands; every step's (loss, correct). The rows end
        at the first step whose loss is not finite (on the device, or injected by GPUDIAG_FAULT's
        nan_at_step). The state records the call's steps and their time; `replay` moves it on."""
        faults, global_step, meter, profile = self.faults, state.global_step, state.meter, self.profile
        cuts: list[int | None] = [faults.nan_at_step, faults.kill_after_step] if faults is not None else []
        cuts += profile.cuts() if profile is not None else ()
        steps = self.spe.next_chunk(state.step_in_epoch, steps_per_epoch, global_step, save_every_steps, cuts)
        if faults is not None:
            for g in range(global_step + 1, global_step + steps + 1):
                faults.before_step(g, self.per_replica_batch)
        profiled = profile if profile is not None and profile.covers(global_step + 1) else None
        if profiled is not None:
            profiled.start()
        started = time.perf_counter()
        rows = run_chunk(self.multi_step, iterator, steps)
        done = time.perf_counter()
        if self.first_call is None:
            self.first_call = (len(rows), done - started)
        state.calls.append(len(rows))
        if profiled is not None:  # profiled steps run slower: neither throughput nor auto's K counts them
            meter.pause()
            if global_step + len(rows) >= profiled.last:
                profiled.stop()
        else:
            self.spe.observe(len(rows), done - started)
            # the chunk's steps share its time evenly: warm-up counting stays exact
            for j in range(len(rows)):
                meter.step_done(started + (done - started) * (j + 1) / len(rows))
        if faults is not None:
            rows = [
                (faults.loss_after_step(global_step + j + 1, loss), c) for j, (loss, c) in enumerate(rows)
            ]
            bad = first_non_finite([loss for loss, _ in rows])
            rows = rows if bad is None else rows[: bad + 1]
        return rows

    @staticmethod
    def replay(rows: list[tuple[float, float]], callbacks: Any, state: RunState) -> dict[str, float] | None:
        """Each step's logs to the callbacks, in order, as one step per call gave them, moving
        `state` on a step each. The caller calls on_train_batch_begin for the first step before the
        call runs (as Keras does), so that with K=1 a callback sees the state before its step; this
        calls it for the others. A non-finite loss raises TrainingDiverged (from
        RunState.record_step) without on_train_batch_end. Returns the last logs."""
        logs = None
        for i, (loss, correct) in enumerate(rows):
            if i:
                callbacks.on_train_batch_begin(state.step_in_epoch)
            step = state.step_in_epoch
            logs = state.record_step(loss, correct)
            callbacks.on_train_batch_end(step, logs)
        return logs

"""--auto-batch-size: the largest per-replica batch that fits, by doubling and then bisecting.

Each attempt runs in a fresh child process (`python -m training ... --probe-batch N`) because
TensorFlow never gives GPU memory back inside a process: after one out-of-memory error, every
later attempt in the same process would see less memory than a real run gets. The search itself
is a pure function of a `fits(batch) -> bool` callable, so it is tested without TensorFlow.

Like Lightning's and accelerate's batch-size finders, it grows from the configured batch until a
batch fails, then bisects between the last batch that fitted and the first that did not: exactly
below 64 per replica, to a multiple of 8 above (within 12%; GPU kernels favour multiples of 8, and
the last few units are not worth a child process each).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

GRANULARITY = 8
FINE_BELOW = 64
PROBE_EXIT_OOM = 3  # the child's exit code when the batch does not fit
PROBE_STEPS = 2
_OOM_WORDS = ("ResourceExhaustedError", "out of memory", "OUT_OF_MEMORY", "OOM when allocating")


class ProbeFailed(RuntimeError):
    """A probe failed for a reason other than memory: the search cannot go on (exit 1)."""


@dataclass
class BatchSearch:
    best: int | None  # the largest per-replica batch that fitted; None if not even 1 did
    attempts: list[tuple[int, bool]] = field(default_factory=list)  # (batch, fitted), in order
    capped: bool = False  # the largest batch the data allows fitted; memory was not the limit


def find_largest_batch(
    fits: Callable[[int], bool], start: int, limit: int, granularity: int = GRANULARITY
) -> BatchSearch:
    """Largest per-replica batch b <= limit with fits(b), assuming that fitting is monotone.

    Grows by doubling from `start` (or halves until one fits), then bisects the gap between the
    largest fit and the smallest failure: exactly below FINE_BELOW, to a multiple of `granularity` above.
    """
    if limit < 1:
        return BatchSearch(None)
    search = BatchSearch(None)
    tried: dict[int, bool] = {}

    def attempt(batch: int) -> bool:
        if batch not in tried:
            tried[batch] = bool(fits(batch))
            search.attempts.append((batch, tried[batch]))
        return tried[batch]

    fitted, failed = 0, None  # largest known fit, smallest known failure
    batch = max(1, min(start, limit))
    if attempt(batch):
        fitted = batch
        while fitted < limit:
            batch = min(2 * fitted, limit)
            if attempt(batch):
                fitted = batch
            else:
                failed = batch
                break
    else:
        failed = batch
        while failed > 1:
            batch = failed // 2
            if attempt(batch):
                fitted = batch
                break
            failed = batch
        if not fitted:
            return search
    if failed is None:
        search.best, search.capped = fitted, True
        return search
    while True:
        if fitted >= FINE_BELOW:
            middle = (fitted + failed) // 2 // granularity * granularity
            if middle <= fitted:  # the next multiple above the largest fit, if any is left
                middle = (fitted // granularity + 1) * granularity
            if middle >= failed:
                break
        else:
            middle = (fitted + failed) // 2
            if middle <= fitted:
                break
        if attempt(middle):
            fitted = middle
        else:
            failed = middle
    search.best = fitted
    return search


def probe_in_child(argv: Sequence[str], per_replica_batch: int, timeout: float | None = None) -> bool:
    """Run PROBE_STEPS steps at this per-replica batch in a fresh process: True if they fit."""
    command = [sys.executable, "-m", "training", *argv, "--probe-batch", str(per_replica_batch)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        raise ProbeFailed(
            f"the probe at per-replica batch {per_replica_batch} did not finish in {timeout:.0f} s"
        ) from None
    if done.returncode == 0:
        return True
    if done.returncode == PROBE_EXIT_OOM or any(word in done.stderr for word in _OOM_WORDS):
        return False
    last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no message")
    raise ProbeFailed(
        f"the probe at per-replica batch {per_replica_batch} failed (exit {done.returncode}): {last}"
    )

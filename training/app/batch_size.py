"""--auto-batch-size: the largest per-replica batch that fits, by doubling and then bisecting; and
what to tell a user whose batch ran out of memory (`oom_message`).

Each attempt runs in a fresh child process (`python -m training.app.batch_size`, handed the parent's
resolved devices and the trainer's own arguments) because TensorFlow never gives GPU memory back
inside a process: after one out-of-memory error, every later attempt in the same process would see
less memory than a real run gets. The search itself is a pure function of a `fits(batch) -> bool`
callable, so it is tested without TensorFlow.

Like Lightning's and accelerate's batch-size finders, it grows from the configured batch until a
batch fails, then bisects between the last batch that fitted and the first that did not: exactly
below 64 per replica, to a multiple of 8 above (within 12%; GPU kernels favour multiples of 8, and
the last few units are not worth a child process each).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from common import child
from training.devices.setup import DevicePlan, add_device_args, plan_from_args
from training.settings.config import TrainConfig

GRANULARITY = 8
FINE_BELOW = 64
PROBE_EXIT_OOM = 3  # the child's exit code when the batch does not fit
PROBE_STEPS = 2
PROBE_TIMEOUT_S = 1800.0  # a first start on a new GPU generation can JIT-compile PTX for many minutes


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


def probe_in_child(
    argv: Sequence[str], plan: DevicePlan, per_replica_batch: int, timeout: float = PROBE_TIMEOUT_S
) -> bool:
    """Run PROBE_STEPS steps at this per-replica batch in a fresh process: True if they fit."""
    command = child.module_command(
        "training.app.batch_size",
        "--per-replica-batch",
        str(per_replica_batch),
        *plan.child_args(),
        "--",
        *argv,
    )
    outcome = child.run(command, timeout, oom_exit=PROBE_EXIT_OOM)
    where = f"the probe at per-replica batch {per_replica_batch}"
    if outcome.kind == child.TIMEOUT:
        raise ProbeFailed(f"{where} did not finish in {timeout:.0f} s")
    if outcome.kind == child.CRASH:
        last = outcome.stderr_lines[-1] if outcome.stderr_lines else "no message"
        raise ProbeFailed(f"{where} failed (exit {outcome.returncode}): {last}")
    return outcome.kind == child.OK


def search(argv: Sequence[str], config: TrainConfig, plan: DevicePlan, num_examples: int) -> int | None:
    """--auto-batch-size, with progress on stderr: the global batch to train with, or None (exit 1)."""
    replicas = plan.num_replicas
    start = config.global_batch_size // replicas
    limit = num_examples // replicas  # a global batch cannot exceed the data

    def fits(per_replica: int) -> bool:
        ok = probe_in_child(argv, plan, per_replica)
        say(f"--auto-batch-size: per-replica batch {per_replica} {'fits' if ok else 'does not fit'}")
        return ok

    say(
        f"--auto-batch-size: searching from {start} per replica on {replicas} replica(s), "
        "one child process per try"
    )
    try:
        found = find_largest_batch(fits, start, limit)
    except ProbeFailed as exc:
        print(f"error: --auto-batch-size: {exc}", file=sys.stderr)
        return None
    if found.best is None:
        print(
            "error: --auto-batch-size: not even a per-replica batch of 1 fits in memory: "
            "use a smaller --model, --mixed-precision, or GPUs with more memory",
            file=sys.stderr,
        )
        return None
    capped = f" (all that {num_examples} examples allow)" if found.capped else ""
    print(
        f"largest per-replica batch that fits: {found.best} (global {found.best * replicas}){capped}, "
        f"found in {len(found.attempts)} tries",
        flush=True,
    )
    return found.best * replicas


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def oom_message(global_batch: int, replicas: int) -> str:
    """What failed and what to try: the next smaller valid batch, half, or the finder; or keep the
    batch (and what the updates mean) and compute it in micro-batches."""
    per_replica = global_batch // replicas
    failed = f"out of memory at global batch {global_batch} ({per_replica} per replica x {replicas} replicas)"
    if per_replica <= 1:
        return f"{failed}: not even one example per replica fits: try a smaller --model or --mixed-precision"
    smaller = global_batch - replicas
    half = max(replicas, global_batch // 2 // replicas * replicas)
    return (
        f"{failed}: the next smaller valid batch is --global-batch-size {smaller} "
        f"({per_replica - 1} per replica); halving, --global-batch-size {half}, is the usual next try, "
        "and --auto-batch-size finds the largest that fits; to keep the batch, --accumulate-steps 2 "
        "computes each update in two micro-batches, in about half the activation memory"
    )


# -- the child: one try ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.app.batch_size --per-replica-batch N DEVICES -- TRAINER_ARGS`: exit 0 if a
    few steps at this batch fit, PROBE_EXIT_OOM if they run out of memory."""
    parser = argparse.ArgumentParser(prog="python -m training.app.batch_size", description=main.__doc__)
    parser.add_argument("--per-replica-batch", type=int, required=True)
    add_device_args(parser)
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
    from training.inputs import data
    from training.settings.cli import parse_config

    config, _quiet = parse_config(trainer_args)
    examples = data.open_source(config.data, config.seed, config.image_size)  # as the run opens it
    plan = plan_from_args(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if plan.kind == "cpu" else "2")
    from training.devices.setup import setup_device_strategy

    setup = setup_device_strategy(plan, config.cross_device_ops)
    from training.loop.trainer import Trainer

    batch = args.per_replica_batch
    try_config = replace(
        config, global_batch_size=batch * setup.num_replicas, checkpoint_dir=None, log_dir=None
    )
    try:
        Trainer(try_config, setup, examples).probe(PROBE_STEPS)
    except Exception as exc:
        if not child.is_out_of_memory(exc):
            raise
        print(f"probe: per-replica batch {batch} does not fit: {child.first_line(exc)}", file=sys.stderr)
        return PROBE_EXIT_OOM
    print(f"probe: per-replica batch {batch} fits")
    return 0


if __name__ == "__main__":
    sys.exit(main())

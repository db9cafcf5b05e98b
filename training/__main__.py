"""`python -m training`: parse flags, plan the devices, train, print the summary, exit 0 / 1 / 2.

Everything that can be checked without TensorFlow (flags, config and inventory files, data, the
checkpoint directory) is checked before TensorFlow is imported, so bad input costs a fraction of a
second, prints one line on stderr, exits 2 and writes nothing.

Exit codes: 0 done; 1 training failed (NaN loss, out of memory, no GPU with --require-gpu);
2 bad input; 130 / 143 stopped by SIGINT / SIGTERM (after a checkpoint, if --checkpoint-dir).
docs/faults.md has the table of what happens on each fault and how to resume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn

from diagnostics.inventory import InventoryError, atomic_write_text
from diagnostics.selection import MODES, SelectionError
from training import batch_size, models
from training import faults as faults_mod
from training.checkpoint import CheckpointError, CheckpointStore, describe_mismatch, fingerprint
from training.config import (
    GLOBAL_BATCH_SIZE,
    ConfigError,
    TrainConfig,
    batch_not_divisible_message,
    parse_save_freq,
    resolve_config,
    resolve_steps_per_epoch,
)
from training.devices import CROSS_DEVICE_OPS, DevicePlan, DeviceSetupError, plan_devices

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEBUG_ENV = "GPUDIAG_DEBUG"


class UsageError(Exception):
    """Bad input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _number(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if kind is int else ' number'}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m training",
        description="Train a Keras model under tf.distribute.MirroredStrategy on the selected GPUs.",
        epilog="Settings can also come from --config FILE (TOML) and TRAINING_<SETTING> variables; "
        "flags win. Exit codes: 0 done, 1 training failed, 2 bad input.",
    )
    a = p.add_argument
    g = p.add_argument_group("devices")
    g.add_argument(
        "--device-mode",
        choices=MODES,
        help="multi (default): every eligible GPU; single: the best one; custom: exactly --custom-gpus",
    )
    g.add_argument(
        "--custom-gpus", type=_number(int), nargs="+", metavar="ID", help="NVML GPU ids (as nvidia-smi)"
    )
    g.add_argument("--min-gpu-memory", type=_number(float), metavar="GB", help="default 8")
    g.add_argument("--include-display-gpus", action="store_true", default=None)
    g.add_argument("--cpu-replicas", type=_number(int), metavar="N", help="train on N CPU logical devices")
    g.add_argument("--require-gpu", action="store_true", default=None, help="exit 1 instead of using the CPU")
    g.add_argument("--cross-device-ops", choices=CROSS_DEVICE_OPS)
    g.add_argument("--inventory", metavar="FILE", help="plan for a recorded snapshot (only with --dry-run)")
    t = p.add_argument_group("training")
    t.add_argument("--model", help=f"one of {', '.join(models.names())} (default cnn)")
    t.add_argument(
        "--data", metavar="PATH", help=".npz with arrays x, y or an image folder; default synthetic"
    )
    t.add_argument("--epochs", type=_number(int))
    t.add_argument("--steps-per-epoch", type=_number(int))
    t.add_argument(
        "--global-batch-size",
        type=_number(int),
        help=f"split over the replicas (default {GLOBAL_BATCH_SIZE})",
    )
    t.add_argument("--learning-rate", type=_number(float))
    t.add_argument("--optimizer", choices=("sgd", "plain-sgd", "adam"), help="sgd (momentum 0.9, default)")
    t.add_argument("--seed", type=_number(int))
    t.add_argument("--mixed-precision", action="store_true", default=None)
    t.add_argument("--jit-compile", action="store_true", default=None, help="XLA for each replica's step")
    t.add_argument("--warmup-steps", type=_number(int), help="steps left out of the throughput (default 5)")
    o = p.add_argument_group("output")
    o.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags")
    o.add_argument("--log-dir", metavar="DIR", help="TensorBoard logs")
    o.add_argument("--summary-json", metavar="PATH")
    o.add_argument("--save-model", metavar="PATH.keras")
    o.add_argument("--dry-run", action="store_true", default=None, help="print the plan and exit")
    r = p.add_argument_group("faults and resuming (docs/faults.md)")
    r.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="save checkpoints here and resume from the newest good one when run again",
    )
    r.add_argument(
        "--save-freq", metavar="{epoch,N}", help="checkpoint every epoch (default) or every N steps"
    )
    r.add_argument(
        "--auto-batch-size",
        action="store_true",
        default=None,
        help="find the largest per-replica batch that fits in memory (a child process per try)",
    )
    # one attempt of --auto-batch-size, run by the parent in a child process
    r.add_argument("--probe-batch", type=_number(int), help=argparse.SUPPRESS)
    a("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_config(argv: Sequence[str] | None) -> tuple[TrainConfig, bool, int | None]:
    """The settings, --quiet, and --probe-batch (set only in a child of --auto-batch-size)."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "quiet", "probe_batch")}
    if flags.get("custom_gpus") is not None:
        flags["custom_gpus"] = tuple(flags["custom_gpus"])
    config = resolve_config(flags, args.config)
    validate(config)
    if args.probe_batch is not None and args.probe_batch < 1:
        raise UsageError(f"--probe-batch must be a positive integer, got {args.probe_batch}")
    return config, args.quiet, args.probe_batch


def validate(c: TrainConfig) -> None:
    """The checks that need neither devices nor TensorFlow."""
    for name in ("epochs", "global_batch_size"):
        if getattr(c, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(c, name)}")
    if c.steps_per_epoch is not None and c.steps_per_epoch < 1:
        raise UsageError(f"--steps-per-epoch must be a positive integer, got {c.steps_per_epoch}")
    if c.warmup_steps < 0:
        raise UsageError(f"--warmup-steps must be >= 0, got {c.warmup_steps}")
    if not (c.learning_rate > 0 and math.isfinite(c.learning_rate)):
        raise UsageError(f"--learning-rate must be a positive number, got {c.learning_rate:g}")
    if c.inventory and not c.dry_run:
        raise UsageError("--inventory replays a recorded machine and only works with --dry-run")
    if c.save_model and not c.save_model.endswith(".keras"):
        raise UsageError(f"--save-model {c.save_model}: the file name must end in .keras")
    for flag, path in (("--summary-json", c.summary_json), ("--save-model", c.save_model)):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise UsageError(f"{flag} {path}: folder {folder} does not exist")
            if not os.access(folder, os.W_OK):
                raise UsageError(f"{flag} {path}: folder {folder} is not writable")
    try:
        models.check_name(c.model)
    except models.ModelError as exc:
        raise UsageError(str(exc)) from None
    parse_save_freq(c.save_freq)
    if c.checkpoint_dir:
        _check_checkpoint_dir(c.checkpoint_dir)


def _check_checkpoint_dir(path: str) -> None:
    """A folder that exists and is writable, or can be created (its nearest existing parent is)."""
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"--checkpoint-dir {path}: exists and is not a folder")
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--checkpoint-dir {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--checkpoint-dir {path}: folder {existing} is not writable")


def check_batch(config: TrainConfig, plan: DevicePlan) -> None:
    if config.global_batch_size % plan.num_replicas:
        raise UsageError(batch_not_divisible_message(config.global_batch_size, plan.num_replicas))


def print_plan(config: TrainConfig, plan: DevicePlan, out: Any = None) -> None:
    out = out or sys.stdout
    per_replica = config.global_batch_size // plan.num_replicas
    print(
        f"plan: {plan.num_replicas} replica(s) on {'GPUs' if plan.kind == 'gpu' else 'the CPU'}, "
        f"MirroredStrategy, cross-device ops {config.cross_device_ops}",
        file=out,
    )
    for line in plan.describe():
        print(f"  {line}", file=out)
    if plan.selection is not None:
        print(f"GPUs ({config.device_mode} mode):", file=out)
        for line in plan.selection.explain():
            print(f"  {line}", file=out)
    print(
        f"global batch {config.global_batch_size} = {per_replica} per replica x {plan.num_replicas}", file=out
    )
    print(f"model {config.model}, data {config.data or 'synthetic'}, {config.epochs} epoch(s)", file=out)


def print_summary(summary: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    from tabulate import tabulate

    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return str(v)

    keys = [
        "model",
        "data",
        "device_kind",
        "replicas",
        "global_batch_size",
        "per_replica_batch_size",
        "epochs",
        "steps",
        "final_loss",
        "final_accuracy",
        "samples_per_sec",
        "samples_per_sec_per_replica",
        "train_seconds",
        "wall_seconds",
    ]
    rows = [(k, fmt(summary[k])) for k in keys]
    if summary["samples_per_sec"] is None:
        rows[keys.index("samples_per_sec")] = (
            "samples_per_sec",
            f"n/a: every step was a warm-up step (--warmup-steps {summary['warmup_steps']})",
        )
    rows.insert(3, ("devices", "\n".join(summary["devices"])))
    print(tabulate(rows, tablefmt="simple"), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\nstopped by SIGINT outside the training loop: nothing more was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    except _Terminated:
        print("stopped by SIGTERM outside the training loop: nothing more was saved", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as exc:  # the promise is no traceback; GPUDIAG_DEBUG=1 shows it for a bug report
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"error: internal error: {type(exc).__name__}: {_one_line(exc)} "
            f"(rerun with {DEBUG_ENV}=1 for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] + ("..." if len(text) > 500 else "")


def _main(argv: list[str]) -> int:
    try:
        faults_mod.from_env()  # a typo in GPUDIAG_FAULT is bad input, found before TensorFlow
        config, quiet, probe_batch = parse_config(argv)
        plan = plan_devices(
            config.device_mode,
            config.custom_gpus,
            config.min_gpu_memory,
            config.include_display_gpus,
            config.cpu_replicas,
            config.require_gpu,
            config.inventory,
        )
        check_batch(config, plan)
        examples = None
        if not config.dry_run or config.data:
            from training import data

            examples = data.load(config.data, config.seed)
            if examples.dropped:
                print(f"warning: {examples.drop_detail}", file=sys.stderr)
        if probe_batch is not None and not config.dry_run:
            assert examples is not None
            return _probe(config, plan, examples, probe_batch)
        config, resume_from = _check_resume(config, plan, examples)
    except (UsageError, ConfigError, SelectionError, InventoryError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DeviceSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED if "--require-gpu" in str(exc) else EXIT_USAGE
    except ValueError as exc:  # data.DataError, faults.FaultSpecError and friends
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    search = config.auto_batch_size and resume_from is None
    if config.dry_run:
        print_plan(config, plan)
        if config.checkpoint_dir:
            print(
                f"checkpoints: will resume from {resume_from}"
                if resume_from
                else (f"checkpoints: none yet in {config.checkpoint_dir}: starting fresh")
            )
        if search:
            print("--auto-batch-size: would search the largest per-replica batch that fits, a child per try")
        return EXIT_OK
    assert examples is not None
    if search:
        found = _auto_batch_size(argv, config, plan, len(examples))
        if found is None:
            return EXIT_FAILED
        config = replace(config, global_batch_size=found)
    return _train(config, plan, examples, quiet, argv)


def _check_resume(config: TrainConfig, plan: DevicePlan, examples: Any) -> tuple[TrainConfig, str | None]:
    """Refuse (exit 2) a --checkpoint-dir that holds another run, before TensorFlow starts.

    Returns the config (with --auto-batch-size, the checkpoint's batch: the same command resumes)
    and a description of the checkpoint a run would resume from, or None.
    """
    if not config.checkpoint_dir:
        return config, None
    found = CheckpointStore(config.checkpoint_dir).peek()
    if found is None:
        return config, None
    saved = found.manifest.fingerprint
    if config.auto_batch_size and isinstance(saved.get("global_batch_size"), int):
        batch = saved["global_batch_size"]
        if batch > 0 and batch % plan.num_replicas == 0:
            config = replace(config, global_batch_size=batch)
    if examples is not None:
        num_examples = len(examples)
    else:  # --dry-run on synthetic data: its size is known without generating it
        from training.data import SYNTHETIC_EXAMPLES

        num_examples = SYNTHETIC_EXAMPLES
    current = fingerprint(config, num_examples, resolve_steps_per_epoch(config, num_examples))
    diff = describe_mismatch(saved, current)
    if diff:
        raise CheckpointError(
            f"--checkpoint-dir {config.checkpoint_dir} holds a different run ({diff}): "
            "resume with the same settings, or use another --checkpoint-dir"
        )
    return config, f"{found.name} ({found.manifest.where()})"


def _auto_batch_size(argv: list[str], config: TrainConfig, plan: DevicePlan, num_examples: int) -> int | None:
    """Search in child processes; returns the global batch to train with, or None (exit 1)."""
    replicas = plan.num_replicas
    start = config.global_batch_size // replicas
    limit = num_examples // replicas  # a global batch cannot exceed the data

    def fits(per_replica: int) -> bool:
        ok = batch_size.probe_in_child(argv, per_replica)
        print(
            f"--auto-batch-size: per-replica batch {per_replica} {'fits' if ok else 'does not fit'}",
            file=sys.stderr,
            flush=True,
        )
        return ok

    print(
        f"--auto-batch-size: searching from {start} per replica on {replicas} replica(s), "
        "one child process per try",
        file=sys.stderr,
        flush=True,
    )
    try:
        search = batch_size.find_largest_batch(fits, start, limit)
    except batch_size.ProbeFailed as exc:
        print(f"error: --auto-batch-size: {exc}", file=sys.stderr)
        return None
    if search.best is None:
        print(
            "error: --auto-batch-size: not even a per-replica batch of 1 fits in memory: "
            "use a smaller --model, --mixed-precision, or GPUs with more memory",
            file=sys.stderr,
        )
        return None
    capped = f" (all that {num_examples} examples allow)" if search.capped else ""
    print(
        f"largest per-replica batch that fits: {search.best} (global {search.best * replicas}){capped}, "
        f"found in {len(search.attempts)} tries",
        flush=True,
    )
    return search.best * replicas


def _probe(config: TrainConfig, plan: DevicePlan, examples: Any, per_replica: int) -> int:
    """One try of --auto-batch-size: exit 0 if a few steps at this batch fit, PROBE_EXIT_OOM if not."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if plan.kind == "cpu" else "2")
    from training.devices import setup_device_strategy

    setup = setup_device_strategy(plan, config.cross_device_ops)
    import tensorflow as tf

    from training.train import Trainer

    global_batch = per_replica * setup.num_replicas
    probe_config = replace(config, global_batch_size=global_batch, checkpoint_dir=None, log_dir=None)
    try:
        Trainer(probe_config, setup, examples).probe(batch_size.PROBE_STEPS)
    except tf.errors.ResourceExhaustedError as exc:
        print(f"probe: per-replica batch {per_replica} does not fit: {_one_line(exc)}", file=sys.stderr)
        return batch_size.PROBE_EXIT_OOM
    print(f"probe: per-replica batch {per_replica} fits")
    return EXIT_OK


def oom_message(global_batch: int, replicas: int) -> str:
    """What failed and what to try: the next smaller valid batch, half, or the finder."""
    per_replica = global_batch // replicas
    failed = f"out of memory at global batch {global_batch} ({per_replica} per replica x {replicas} replicas)"
    if per_replica <= 1:
        return f"{failed}: not even one example per replica fits: try a smaller --model or --mixed-precision"
    smaller = global_batch - replicas
    half = max(replicas, global_batch // 2 // replicas * replicas)
    return (
        f"{failed}: the next smaller valid batch is --global-batch-size {smaller} "
        f"({per_replica - 1} per replica); halving, --global-batch-size {half}, is the usual next try, "
        "and --auto-batch-size finds the largest that fits"
    )


class _Terminated(Exception):
    """SIGTERM outside the training loop (which handles it itself, after a whole step)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM while TensorFlow starts or the model builds: a one-line exit 143, not a bare kill."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_command(argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "training", *argv])


def _train(config: TrainConfig, plan: DevicePlan, examples: Any, quiet: bool, argv: list[str]) -> int:
    with _sigterm_raises():
        return _train_inner(config, plan, examples, quiet, argv)


def _train_inner(config: TrainConfig, plan: DevicePlan, examples: Any, quiet: bool, argv: list[str]) -> int:
    # TensorFlow's C++ start-up chatter hides the messages that matter; keep errors only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if plan.kind == "cpu" else "2")
    from training.devices import setup_device_strategy

    setup = setup_device_strategy(plan, config.cross_device_ops)
    for warning in setup.warnings[len(plan.warnings) :]:
        print(f"warning: {warning}", file=sys.stderr)
    import tensorflow as tf

    from training import train
    from training.data import DataError

    print_plan(config, plan, sys.stderr)
    try:
        summary = train.run(config, setup, examples, verbose=0 if quiet else 1)
    except train.TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        if exc.checkpoint:
            print(f"resume with: {resume_command(argv)}", file=sys.stderr)
        elif config.checkpoint_dir:
            print(f"no checkpoint yet: start again with: {resume_command(argv)}", file=sys.stderr)
        else:
            print("nothing was saved: add --checkpoint-dir DIR to make a run resumable", file=sys.stderr)
        return exc.exit_code
    except train.TrainingDiverged as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except tf.errors.ResourceExhaustedError:
        print(f"\nerror: {oom_message(config.global_batch_size, setup.num_replicas)}", file=sys.stderr)
        return EXIT_FAILED
    except (DataError, models.ModelError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_summary(summary)
    if config.summary_json:
        atomic_write_text(config.summary_json, json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {config.summary_json}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

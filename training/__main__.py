"""`python -m training`: parse flags, plan the devices, train, print the summary, exit 0 / 1 / 2.

Everything that can be checked without TensorFlow (flags, config and inventory files, data) is
checked before TensorFlow is imported, so bad input costs a fraction of a second, prints one
line on stderr, exits 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from diagnostics.inventory import InventoryError, atomic_write_text
from diagnostics.selection import MODES, SelectionError
from training import models
from training.config import (
    GLOBAL_BATCH_SIZE,
    ConfigError,
    TrainConfig,
    batch_not_divisible_message,
    resolve_config,
)
from training.devices import CROSS_DEVICE_OPS, DevicePlan, DeviceSetupError, plan_devices

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
    a("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_config(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "quiet")}
    if flags.get("custom_gpus") is not None:
        flags["custom_gpus"] = tuple(flags["custom_gpus"])
    config = resolve_config(flags, args.config)
    validate(config)
    return config, args.quiet


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
        return f"{v:,.4g}" if isinstance(v, float) else str(v)

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
    rows.insert(3, ("devices", "\n".join(summary["devices"])))
    print(tabulate(rows, tablefmt="simple"), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, quiet = parse_config(argv)
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
    except (UsageError, ConfigError, SelectionError, InventoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DeviceSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED if "--require-gpu" in str(exc) else EXIT_USAGE
    except ValueError as exc:  # data.DataError and friends
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.dry_run:
        print_plan(config, plan)
        return EXIT_OK
    assert examples is not None
    return _train(config, plan, examples, quiet)


def _train(config: TrainConfig, plan: DevicePlan, examples: Any, quiet: bool) -> int:
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
    except train.TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except tf.errors.ResourceExhaustedError:
        replicas = setup.num_replicas
        smaller = max(replicas, (config.global_batch_size // 2) // replicas * replicas)
        print(
            f"error: out of GPU memory at global batch {config.global_batch_size} "
            f"({config.global_batch_size // replicas} per replica on {replicas} replicas): "
            f"try --global-batch-size {smaller}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except (DataError, models.ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_summary(summary)
    if config.summary_json:
        atomic_write_text(config.summary_json, json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {config.summary_json}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

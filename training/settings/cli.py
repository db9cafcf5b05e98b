"""The trainer's command line: its flags (`build_parser`) and the settings they give, merged with a
config file and the environment and checked (`parse_config`); and those of `python -m training
evaluate MODEL.keras` (`build_evaluate_parser`, `parse_evaluate`). No TensorFlow here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any, NoReturn

from common.errors import UserError
from diagnostics.cluster import CLUSTER_MODES
from diagnostics.selection import add_selection_options
from training.devices.setup import CROSS_DEVICE_OPS
from training.inputs import models
from training.settings.config import (
    COLLECTIVE_TIMEOUT_S,
    COMMUNICATIONS,
    DEFAULT_LEARNING_RATES,
    GLOBAL_BATCH_SIZE,
    OPTIMIZERS,
    SCALING_RULES,
    TrainConfig,
    resolve_config,
    validate,
)


class UsageError(UserError):
    """Flags argparse cannot parse: one line on stderr, exit 2."""


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
        description="Train a Keras model under tf.distribute.MirroredStrategy on the selected GPUs. "
        "`python -m training evaluate MODEL.keras --data PATH` evaluates a saved model instead.",
        epilog="Settings can also come from --config FILE (TOML) and TRAINING_<SETTING> variables; "
        "flags win. Exit codes: 0 done, 1 training failed, 2 bad input.",
    )
    a = p.add_argument
    _add_device_options(p)
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
    defaults = ", ".join(f"{name} {rate:g}" for name, rate in DEFAULT_LEARNING_RATES.items())
    t.add_argument(
        "--learning-rate",
        type=_number(float),
        help=f"the rate for --reference-batch-size (default: the optimizer's usual rate: {defaults})",
    )
    t.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (momentum 0.9, default)")
    t.add_argument(
        "--scale-learning-rate",
        choices=SCALING_RULES,
        help="scale the rate by global batch / --reference-batch-size (linear) or its square root "
        "(sqrt); default none",
    )
    t.add_argument(
        "--reference-batch-size",
        type=_number(int),
        metavar="N",
        help=f"the global batch --learning-rate is meant for (default {GLOBAL_BATCH_SIZE})",
    )
    t.add_argument(
        "--warmup-epochs",
        type=_number(float),
        metavar="E",
        help="reach the rate by a linear warm-up over E epochs (Goyal et al.; default 0)",
    )
    t.add_argument("--seed", type=_number(int))
    t.add_argument("--mixed-precision", action="store_true", default=None)
    t.add_argument("--jit-compile", action="store_true", default=None, help="XLA for each replica's step")
    t.add_argument("--warmup-steps", type=_number(int), help="steps left out of the throughput (default 5)")
    v = p.add_argument_group("validation")
    v.add_argument(
        "--validation-split",
        type=_number(float),
        metavar="F",
        help="hold out this fraction of the data (chosen by --seed) and evaluate on it after each epoch",
    )
    v.add_argument(
        "--validation-data",
        metavar="PATH",
        help="evaluate on this data (.npz or image folder, like --data) after each epoch",
    )
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
        "--steps-per-execution",
        metavar="{auto,K}",
        help="training steps per traced call, one host sync each (default auto: about every 0.15 s); "
        "checkpoints, signals and callbacks' stop requests act at the end of a call",
    )
    r.add_argument(
        "--auto-batch-size",
        action="store_true",
        default=None,
        help="find the largest per-replica batch that fits in memory (a child process per try)",
    )
    m = p.add_argument_group("more than one machine (MultiWorkerMirroredStrategy)")
    m.add_argument(
        "--cluster",
        choices=CLUSTER_MODES,
        help="auto (default): TF_CONFIG if set, else a Slurm job step of several tasks, else this "
        "machine alone; each worker runs the same command",
    )
    m.add_argument("--communication", choices=COMMUNICATIONS, help="the collectives' implementation")
    m.add_argument(
        "--collective-timeout",
        type=_number(float),
        metavar="S",
        help=f"seconds a collective waits for a peer before the run stops (default {COLLECTIVE_TIMEOUT_S:g})",
    )
    m.add_argument(
        "--local-workers",
        type=_number(int),
        metavar="N",
        help="start N workers on this machine (localhost ports, TF_CONFIG set for each), GPUs split "
        "between them; exits with the worst worker's code",
    )
    a("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _add_device_options(p: argparse.ArgumentParser, inventory: bool = True) -> None:
    """The device flags, the same for training and evaluation (which has no --dry-run to replay an
    inventory with)."""
    g = p.add_argument_group("devices")
    add_selection_options(g.add_argument)
    g.add_argument("--cpu-replicas", type=_number(int), metavar="N", help="train on N CPU logical devices")
    g.add_argument("--require-gpu", action="store_true", default=None, help="exit 1 instead of using the CPU")
    g.add_argument("--cross-device-ops", choices=CROSS_DEVICE_OPS)
    if inventory:
        g.add_argument(
            "--inventory",
            metavar="FILE",
            help="plan for a recorded snapshot or an nvidia-smi -q -x dump (only with --dry-run)",
        )
    g.add_argument(
        "--skip-preflight",
        action="store_true",
        default=None,
        help="run even where gpudiag's checks of the selected GPUs fail",
    )


def parse_config(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    """The checked settings, and --quiet."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "quiet")}
    return validate(resolve_config(flags, args.config)), args.quiet


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m training evaluate",
        description="Evaluate a saved Keras model (--save-model, ModelCheckpoint) under "
        "MirroredStrategy: loss and accuracy over every example of --data.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input (a file that is not a Keras model, data "
        "that does not fit it, a bad flag).",
    )
    p.add_argument("model_path", metavar="MODEL.keras", help="a model saved by model.save() or --save-model")
    _add_device_options(p, inventory=False)
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--data", metavar="PATH", help=".npz with arrays x, y or an image folder; default synthetic"
    )
    e.add_argument("--seed", type=_number(int), help="the synthetic data's seed (default 42)")
    e.add_argument(
        "--global-batch-size",
        type=_number(int),
        help=f"split over the replicas (default {GLOBAL_BATCH_SIZE})",
    )
    e.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags")
    e.add_argument("--summary-json", metavar="PATH", help="write the results here as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_evaluate(argv: Sequence[str]) -> tuple[str, TrainConfig, bool]:
    """The model file, the checked settings (devices, data, batch) and --quiet."""
    args = build_evaluate_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "quiet", "model_path")}
    return args.model_path, validate(resolve_config(flags, args.config)), args.quiet

"""The trainer's command line: its flags (`build_parser`) and the settings they give, merged with a
config file and the environment and checked (`parse_config`). No TensorFlow here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any, NoReturn

from common.errors import UserError
from diagnostics.selection import add_selection_options
from training import models
from training.config import GLOBAL_BATCH_SIZE, TrainConfig, resolve_config, validate
from training.devices import CROSS_DEVICE_OPS


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
        description="Train a Keras model under tf.distribute.MirroredStrategy on the selected GPUs.",
        epilog="Settings can also come from --config FILE (TOML) and TRAINING_<SETTING> variables; "
        "flags win. Exit codes: 0 done, 1 training failed, 2 bad input.",
    )
    a = p.add_argument
    g = p.add_argument_group("devices")
    add_selection_options(g.add_argument)
    g.add_argument("--cpu-replicas", type=_number(int), metavar="N", help="train on N CPU logical devices")
    g.add_argument("--require-gpu", action="store_true", default=None, help="exit 1 instead of using the CPU")
    g.add_argument("--cross-device-ops", choices=CROSS_DEVICE_OPS)
    g.add_argument(
        "--inventory",
        metavar="FILE",
        help="plan for a recorded snapshot or an nvidia-smi -q -x dump (only with --dry-run)",
    )
    g.add_argument(
        "--skip-preflight",
        action="store_true",
        default=None,
        help="train even where gpudiag's checks of the selected GPUs fail",
    )
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
    a("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_config(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    """The checked settings, and --quiet."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "quiet")}
    return validate(resolve_config(flags, args.config)), args.quiet

"""The trainer's command lines, derived from the settings table: `python -m training` (`build_parser`,
`parse_config`) and `python -m training evaluate MODEL.keras` (`build_evaluate_parser`,
`parse_evaluate`). Flags are merged with a config file and the environment, then checked. No
TensorFlow here.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from common.cli import Parser
from diagnostics.selection import add_selection_options
from training.settings.config import DEVICES, OUTPUT, TrainConfig, resolve_config, validate
from training.settings.table import add_flags


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m training",
        description="Train a Keras model under tf.distribute.MirroredStrategy on the selected GPUs. "
        "`python -m training evaluate MODEL.keras --data PATH` evaluates a saved model instead.",
        epilog="Settings can also come from --config FILE (TOML) and TRAINING_<SETTING> variables; "
        "flags win. Exit codes: 0 done, 1 training failed, 2 bad input.",
    )
    devices = p.add_argument_group(DEVICES)
    add_selection_options(devices.add_argument)
    groups = {DEVICES: devices}
    for title in ("training", "validation"):
        groups[title] = p.add_argument_group(title)
    output = groups[OUTPUT] = p.add_argument_group(OUTPUT)
    output.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags")
    add_flags(p, TrainConfig, groups)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_config(argv: Sequence[str] | None) -> tuple[TrainConfig, bool]:
    """The checked settings, and --quiet."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "quiet")}
    return validate(resolve_config(flags, args.config)), args.quiet


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m training evaluate",
        description="Evaluate a saved Keras model (--save-model, ModelCheckpoint) under "
        "MirroredStrategy: loss and accuracy over every example of --data.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input (a file that is not a Keras model, data "
        "that does not fit it, a bad flag).",
    )
    p.add_argument("model_path", metavar="MODEL.keras", help="a model saved by model.save() or --save-model")
    devices = p.add_argument_group(DEVICES)
    add_selection_options(devices.add_argument)
    evaluation = p.add_argument_group("evaluation")
    add_flags(p, TrainConfig, {DEVICES: devices, "*": evaluation}, evaluate=True)
    evaluation.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def parse_evaluate(argv: Sequence[str]) -> tuple[str, TrainConfig, bool]:
    """The model file, the checked settings (devices, data, batch) and --quiet."""
    args = build_evaluate_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "quiet", "model_path")}
    return args.model_path, validate(resolve_config(flags, args.config)), args.quiet

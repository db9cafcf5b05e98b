"""The trainer's settings: `TrainConfig`, the one table of them (type, default, help, group and
check of each), and where their values come from: defaults, then a TOML config file, then
TRAINING_* environment variables, then command-line flags, each overriding the one before;
and `validate`, every check of them that needs neither devices nor TensorFlow. The rule that the
global batch splits evenly over the replicas is training.settings.batch.

The GPU-selection settings are one `SelectionOptions` (`config.selection`); in files, the
environment and flags they keep their flat names (`device_mode`, `custom_gpus`, ...).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from diagnostics.cluster import CLUSTER_MODES
from diagnostics.selection import SELECTION_DESTS, SelectionError, SelectionOptions
from training.inputs import models
from training.settings import checks
from training.settings.table import ConfigError, check_all, coerce, parse_text, rows, setting

GLOBAL_BATCH_SIZE = 128
DEFAULT_EPOCHS = 2
DEFAULT_SEED = 42
# Each optimizer's usual starting rate, used where --learning-rate is not given: SGD's 0.01 makes
# Adam diverge (loss 8.9 after 5 steps on the default CNN); 0.001 is Adam's own default.
OPTIMIZERS = ("sgd", "plain-sgd", "adam")
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "plain-sgd": 0.01, "adam": 0.001}
SCALING_RULES = ("none", "linear", "sqrt")
# MirroredStrategy's all-reduce: --cross-device-ops (training.devices.setup maps them to TensorFlow's)
CROSS_DEVICE_OPS = ("auto", "nccl", "hierarchical", "reduce-to-one")
# MultiWorkerMirroredStrategy's CommunicationOptions.implementation
COMMUNICATIONS = ("auto", "ring", "nccl")
# How long a collective waits for a peer: long enough for a slow peer's first step (tracing, XLA),
# short enough that a worker that died silently does not hold the others for good
COLLECTIVE_TIMEOUT_S = 300.0
ENV_PREFIX = "TRAINING_"


# A setting's flat name -> its SelectionOptions field, in the same order.
_SELECTION_FIELDS = dict(zip(SELECTION_DESTS, (f.name for f in fields(SelectionOptions)), strict=True))


# -- the table ---------------------------------------------------------------------------------------

_DEFAULT_RATES = ", ".join(f"{name} {rate:g}" for name, rate in DEFAULT_LEARNING_RATES.items())
_DATA_HELP = (
    ".npz with arrays x, y, an image folder (streamed) or TFRecord files (a folder or a glob); "
    "default synthetic"
)
DEVICES, TRAINING, VALIDATION, OUTPUT = "devices", "training", "validation", "output"
FAULTS = "faults and resuming (docs/faults.md)"
MACHINES = "more than one machine (MultiWorkerMirroredStrategy)"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run, one field each: its type, default, flag help, group and check.

    Flags, `--config` TOML keys, `TRAINING_<NAME>` variables and validation all come from these
    declarations (training.settings.table). The GPU selection is one `SelectionOptions`, declared by
    diagnostics.selection for gpudiag, the trainer and the sweep alike.
    """

    selection: SelectionOptions = field(default_factory=SelectionOptions)
    # devices
    cpu_replicas: int | None = setting(
        None, "train on N CPU logical devices", group=DEVICES, metavar="N", evaluate=True
    )
    require_gpu: bool = setting(False, "exit 1 instead of using the CPU", group=DEVICES, evaluate=True)
    cross_device_ops: str = setting("auto", group=DEVICES, choices=CROSS_DEVICE_OPS, evaluate=True)
    inventory: str | None = setting(
        None,
        "plan for a recorded snapshot or an nvidia-smi -q -x dump (only with --dry-run)",
        group=DEVICES,
        metavar="FILE",
    )
    skip_preflight: bool = setting(
        False, "run even where gpudiag's checks of the selected GPUs fail", group=DEVICES, evaluate=True
    )
    # training
    model: str = setting("cnn", models.MODEL_HELP, group=TRAINING, check=checks.model_name)
    custom_objects: str | None = setting(
        None, models.CUSTOM_HELP, group=TRAINING, metavar="PY|MODULE", check=checks.importable, evaluate=True
    )
    data: str | None = setting(None, _DATA_HELP, group=TRAINING, metavar="PATH", evaluate=True)
    image_size: int = setting(
        64,
        "decode image folders and TFRecord images to SIZE x SIZE pixels (default 64)",
        group=TRAINING,
        metavar="SIZE",
        check=checks.positive_int,
        evaluate=True,
    )
    epochs: int = setting(DEFAULT_EPOCHS, group=TRAINING, check=checks.positive_int)
    steps_per_epoch: int | None = setting(None, group=TRAINING, check=checks.positive_int)
    global_batch_size: int = setting(
        GLOBAL_BATCH_SIZE,
        f"split over the replicas (default {GLOBAL_BATCH_SIZE})",
        group=TRAINING,
        check=checks.positive_int,
        evaluate=True,
    )
    learning_rate: float | None = setting(
        None,
        f"the rate for --reference-batch-size (default: the optimizer's usual rate: {_DEFAULT_RATES})",
        group=TRAINING,
        check=checks.positive_number,
    )
    optimizer: str = setting("sgd", "sgd (momentum 0.9, default)", group=TRAINING, choices=OPTIMIZERS)
    scale_learning_rate: str = setting(
        "none",
        "scale the rate by global batch / --reference-batch-size (linear) or its square root "
        "(sqrt); default none",
        group=TRAINING,
        choices=SCALING_RULES,
    )
    reference_batch_size: int = setting(
        GLOBAL_BATCH_SIZE,
        f"the global batch --learning-rate is meant for (default {GLOBAL_BATCH_SIZE})",
        group=TRAINING,
        metavar="N",
        check=checks.positive_int,
    )
    # a linear learning-rate warm-up (not --warmup-steps, the throughput's)
    warmup_epochs: float = setting(
        0.0,
        "reach the rate by a linear warm-up over E epochs (Goyal et al.; default 0)",
        group=TRAINING,
        metavar="E",
        check=checks.epochs_at_least_0,
    )
    seed: int = setting(
        DEFAULT_SEED, group=TRAINING, evaluate=f"the synthetic data's seed (default {DEFAULT_SEED})"
    )
    mixed_precision: bool = setting(False, group=TRAINING)
    jit_compile: bool = setting(False, "XLA for each replica's step", group=TRAINING)
    warmup_steps: int = setting(
        5, "steps left out of the throughput (default 5)", group=TRAINING, check=checks.at_least(0, ">= 0")
    )
    accumulate_steps: int = setting(
        1,
        "compute each update over K micro-batches (the global batch split in K), their gradients "
        "summed and all-reduced once: the same update in less memory (default 1)",
        group=TRAINING,
        metavar="K",
        check=checks.positive_int,
    )
    # validation
    validation_split: float | None = setting(
        None,
        "hold out this fraction of the data (chosen by --seed) and evaluate on it after each epoch",
        group=VALIDATION,
        metavar="F",
        check=checks.fraction,
    )
    validation_data: str | None = setting(
        None,
        "evaluate on this data (.npz or image folder, like --data) after each epoch",
        group=VALIDATION,
        metavar="PATH",
    )
    # output
    log_dir: str | None = setting(None, "TensorBoard logs", group=OUTPUT, metavar="DIR")
    profile_steps: str | None = setting(
        None,
        "a TensorBoard profile of global steps A to B (1-based, both included) under --log-dir; "
        "those steps are left out of samples_per_sec",
        group=OUTPUT,
        metavar="A:B",
        check=checks.profile_steps,
    )
    summary_json: str | None = setting(
        None,
        group=OUTPUT,
        metavar="PATH",
        check=checks.writable_file,
        evaluate="write the results here as JSON",
    )
    save_model: str | None = setting(None, group=OUTPUT, metavar="PATH.keras", check=checks.keras_file)
    dry_run: bool = setting(False, "print the plan and exit", group=OUTPUT)
    # faults and resuming
    checkpoint_dir: str | None = setting(
        None,
        "save checkpoints here and resume from the newest good one when run again",
        group=FAULTS,
        metavar="DIR",
        check=checks.checkpoint_dir,
    )
    save_freq: str = setting(
        "epoch",
        "checkpoint every epoch (default) or every N steps",
        group=FAULTS,
        metavar="{epoch,N}",
        check=checks.save_freq,
        number_as_text=True,
    )
    steps_per_execution: str = setting(
        "auto",
        "training steps per traced call, one host sync each (default auto: about every 0.15 s); "
        "checkpoints, signals and callbacks' stop requests act at the end of a call",
        group=FAULTS,
        metavar="{auto,K}",
        check=checks.steps_per_execution,
        number_as_text=True,
    )
    auto_batch_size: bool = setting(
        False,
        "find the largest per-replica batch that fits in memory (a child process per try)",
        group=FAULTS,
    )
    # more than one machine
    cluster: str = setting(
        "auto",
        "auto (default): TF_CONFIG if set, else a Slurm job step of several tasks, else this "
        "machine alone; each worker runs the same command",
        group=MACHINES,
        choices=CLUSTER_MODES,
    )
    communication: str = setting(
        "auto", "the collectives' implementation", group=MACHINES, choices=COMMUNICATIONS
    )
    collective_timeout: float = setting(
        COLLECTIVE_TIMEOUT_S,
        f"seconds a collective waits for a peer before the run stops (default {COLLECTIVE_TIMEOUT_S:g})",
        group=MACHINES,
        metavar="S",
        check=checks.seconds,
    )
    local_workers: int | None = setting(
        None,
        "start N workers on this machine (localhost ports, TF_CONFIG set for each), GPUs split "
        "between them; exits with the worst worker's code",
        group=MACHINES,
        metavar="N",
        check=checks.at_least(1, "a number of workers >= 1"),
    )

    def merged(self, overrides: Mapping[str, Any], origin: str) -> TrainConfig:
        """A copy with `overrides` applied; unknown keys and wrong types are a ConfigError."""
        table = {row.name: row for row in rows(TrainConfig)}
        changes: dict[str, Any] = {}
        selection: dict[str, Any] = {}
        for raw_key, value in overrides.items():
            key = raw_key.replace("-", "_")
            if key in _SELECTION_FIELDS:
                name = _SELECTION_FIELDS[key]
                selection[name] = _coerce_selection(key, value, getattr(self.selection, name), origin)
            elif key in table:
                changes[key] = coerce(table[key], value, origin)
            else:
                raise ConfigError(f"{origin}: unknown setting {raw_key!r}")
        if selection:
            changes["selection"] = replace(self.selection, **selection)
        return replace(self, **changes)

    @property
    def base_learning_rate(self) -> float:
        """--learning-rate, or the optimizer's usual rate where it is not given: the one place
        "not given" is resolved (before any scaling by the global batch: training.loop.learning_rate)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATES[self.optimizer]


def setting_names() -> set[str]:
    """Every key a config file, a TRAINING_* variable or a flag may set."""
    return {row.name for row in rows(TrainConfig)} | set(SELECTION_DESTS)


def _coerce_selection(key: str, value: Any, current: Any, origin: str) -> Any:
    """A selection setting from a file or the environment (SelectionOptions.validate checks it)."""
    if key == "custom_gpus":
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{origin}: {key} must be a list of GPU ids")
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: {key} must be a list of GPU ids, got {value!r}") from None
    kind = type(current)
    if isinstance(value, str) and kind is not str:
        value = parse_text(value, kind, key, origin)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: {key} must be {kind.__name__}, got {value!r}")
    return value


def resolve_steps_per_epoch(config: TrainConfig, num_examples: int) -> int:
    """--steps-per-epoch, or one pass over the data in whole global batches."""
    return config.steps_per_epoch or max(1, num_examples // config.global_batch_size)


def load_config_file(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not valid TOML (not UTF-8 text)") from None
    # allow the settings at top level or under [training]
    section = data.get("training", data)
    if not isinstance(section, dict):
        raise ConfigError(f"--config {path}: [training] must be a table")
    return section


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    names = setting_names()
    out = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            if key in names:
                out[key] = value
    return out


def resolve_config(
    flags: Mapping[str, Any], config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> TrainConfig:
    """Defaults < config file < TRAINING_* environment < flags given on the command line."""
    config = TrainConfig()
    if config_file:
        config = config.merged(load_config_file(config_file), f"--config {config_file}")
    config = config.merged(env_overrides(environ), "environment")
    return config.merged({k: v for k, v in flags.items() if v is not None}, "command line")


def validate(c: TrainConfig) -> TrainConfig:
    """Every check that needs neither devices nor TensorFlow: each setting's own (the table's), then
    those between settings. Raises a ConfigError, returns `c`."""
    try:
        c.selection.validate()
    except SelectionError as exc:
        raise ConfigError(str(exc)) from None
    check_all(c)
    if c.validation_split is not None and c.validation_data:
        raise ConfigError("--validation-split and --validation-data both name validation data: give one")
    if c.profile_steps and not c.log_dir:
        raise ConfigError("--profile-steps writes a TensorBoard profile under --log-dir: give --log-dir DIR")
    if c.inventory and not c.dry_run:
        raise ConfigError("--inventory replays a recorded machine and only works with --dry-run")
    return c

"""Training settings: defaults, then a TOML config file, then TRAINING_* environment variables,
then command-line flags, each overriding the one before; and `validate`, every check of them that
needs neither devices nor TensorFlow.

The GPU-selection settings are one `SelectionOptions` (`config.selection`); in files, the
environment and flags they keep their flat names (`device_mode`, `custom_gpus`, ...).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common.errors import UserError
from diagnostics.cluster import CLUSTER_MODES
from diagnostics.selection import SELECTION_DESTS, SelectionError, SelectionOptions
from training.inputs import models
from training.loop.steps import parse_steps_per_execution  # pure Python until a trainer is built

GLOBAL_BATCH_SIZE = 128
DEFAULT_EPOCHS = 2
DEFAULT_SEED = 42
# Each optimizer's usual starting rate, used where --learning-rate is not given: SGD's 0.01 makes
# Adam diverge (loss 8.9 after 5 steps on the default CNN); 0.001 is Adam's own default.
OPTIMIZERS = ("sgd", "plain-sgd", "adam")
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "plain-sgd": 0.01, "adam": 0.001}
SCALING_RULES = ("none", "linear", "sqrt")
# MultiWorkerMirroredStrategy's CommunicationOptions.implementation
COMMUNICATIONS = ("auto", "ring", "nccl")
# How long a collective waits for a peer: long enough for a slow peer's first step (tracing, XLA),
# short enough that a worker that died silently does not hold the others for good
COLLECTIVE_TIMEOUT_S = 300.0
ENV_PREFIX = "TRAINING_"


class ConfigError(UserError):
    """A setting that cannot be used (a user error: one line, exit 2)."""


# A setting's flat name -> its SelectionOptions field, in the same order.
_SELECTION_FIELDS = dict(zip(SELECTION_DESTS, (f.name for f in fields(SelectionOptions)), strict=True))


@dataclass(frozen=True)
class TrainConfig:
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    model: str = "cnn"
    data: str | None = None
    epochs: int = DEFAULT_EPOCHS
    steps_per_epoch: int | None = None
    global_batch_size: int = GLOBAL_BATCH_SIZE
    learning_rate: float | None = None  # None: the optimizer's default (base_learning_rate)
    optimizer: str = "sgd"
    scale_learning_rate: str = "none"  # "linear" or "sqrt": by global batch / reference batch
    reference_batch_size: int = GLOBAL_BATCH_SIZE
    warmup_epochs: float = 0.0  # linear learning-rate warm-up (not --warmup-steps, the throughput's)
    validation_split: float | None = None  # a fraction of the data held out for validation
    validation_data: str | None = None
    seed: int = DEFAULT_SEED
    mixed_precision: bool = False
    jit_compile: bool = False
    cross_device_ops: str = "auto"
    cpu_replicas: int | None = None
    log_dir: str | None = None
    summary_json: str | None = None
    save_model: str | None = None
    warmup_steps: int = 5
    require_gpu: bool = False
    dry_run: bool = False
    inventory: str | None = None
    checkpoint_dir: str | None = None
    save_freq: str = "epoch"  # "epoch", or a number of steps as text ("200")
    steps_per_execution: str = "auto"  # "auto", or a number of steps per traced call as text ("20")
    cluster: str = "auto"  # diagnostics.cluster.CLUSTER_MODES
    communication: str = "auto"
    collective_timeout: float = COLLECTIVE_TIMEOUT_S
    local_workers: int | None = None
    auto_batch_size: bool = False
    skip_preflight: bool = False  # train even where gpudiag's preflight checks fail

    def merged(self, overrides: Mapping[str, Any], origin: str) -> TrainConfig:
        """A copy with `overrides` applied; unknown keys and wrong types are a ConfigError."""
        known = setting_names()
        changes: dict[str, Any] = {}
        selection: dict[str, Any] = {}
        for raw_key, value in overrides.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                raise ConfigError(f"{origin}: unknown setting {raw_key!r}")
            if key in _SELECTION_FIELDS:
                name = _SELECTION_FIELDS[key]
                selection[name] = _coerce(key, value, getattr(self.selection, name), origin)
            else:
                changes[key] = _coerce(key, value, getattr(self, key), origin)
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
    return {f.name for f in fields(TrainConfig) if f.name != "selection"} | set(SELECTION_DESTS)


def _coerce(key: str, value: Any, current: Any, origin: str) -> Any:
    """Type-check a value from a file or the environment against the setting's default."""
    if key in ("save_freq", "steps_per_execution") and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `save_freq = 200` in TOML
    if key == "custom_gpus":
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{origin}: {key} must be a list of GPU ids")
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: {key} must be a list of GPU ids, got {value!r}") from None
    expected: type = type(current) if current is not None else _OPTIONAL_TYPES.get(key, str)
    if isinstance(value, str) and expected is not str:
        value = _parse_text(value, expected, key, origin)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: {key} must be {expected.__name__}, got {value!r}")
    return value


_OPTIONAL_TYPES: dict[str, type] = {
    "local_workers": int,
    "steps_per_epoch": int,
    "cpu_replicas": int,
    "learning_rate": float,
    "validation_split": float,
}


def parse_save_freq(text: str) -> int | None:
    """--save-freq: None for "epoch" (a checkpoint at the end of each epoch), else every N steps."""
    value = text.strip().lower()
    if value == "epoch":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ConfigError(f"--save-freq must be 'epoch' or a positive number of steps, got {text!r}")


def resolve_steps_per_epoch(config: TrainConfig, num_examples: int) -> int:
    """--steps-per-epoch, or one pass over the data in whole global batches."""
    return config.steps_per_epoch or max(1, num_examples // config.global_batch_size)


def _parse_text(text: str, expected: type, key: str, origin: str) -> Any:
    if expected is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{origin}: {key} must be true or false, got {text!r}")
    try:
        return expected(text)
    except ValueError:
        raise ConfigError(f"{origin}: {key} must be {expected.__name__}, got {text!r}") from None


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
    """The checks that need neither devices nor TensorFlow; raises a UserError, returns `c`."""
    try:
        c.selection.validate()
    except SelectionError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("epochs", "global_batch_size"):
        value = getattr(c, name)
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if c.steps_per_epoch is not None and c.steps_per_epoch < 1:
        raise ConfigError(f"--steps-per-epoch must be a positive integer, got {c.steps_per_epoch}")
    if c.warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must be >= 0, got {c.warmup_steps}")
    if c.learning_rate is not None and not (c.learning_rate > 0 and math.isfinite(c.learning_rate)):
        raise ConfigError(f"--learning-rate must be a positive number, got {c.learning_rate:g}")
    _check_choice("--optimizer", c.optimizer, OPTIMIZERS)
    _check_choice("--scale-learning-rate", c.scale_learning_rate, SCALING_RULES)
    if c.reference_batch_size < 1:
        raise ConfigError(f"--reference-batch-size must be a positive integer, got {c.reference_batch_size}")
    if not (c.warmup_epochs >= 0 and math.isfinite(c.warmup_epochs)):
        raise ConfigError(f"--warmup-epochs must be a number of epochs >= 0, got {c.warmup_epochs:g}")
    if c.validation_split is not None and not 0 < c.validation_split < 1:
        raise ConfigError(
            f"--validation-split must be a fraction between 0 and 1, both excluded, "
            f"got {c.validation_split:g}"
        )
    if c.validation_split is not None and c.validation_data:
        raise ConfigError("--validation-split and --validation-data both name validation data: give one")
    if c.inventory and not c.dry_run:
        raise ConfigError("--inventory replays a recorded machine and only works with --dry-run")
    if c.save_model and not c.save_model.endswith(".keras"):
        raise ConfigError(f"--save-model {c.save_model}: the file name must end in .keras")
    for flag, path in (("--summary-json", c.summary_json), ("--save-model", c.save_model)):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise ConfigError(f"{flag} {path}: folder {folder} does not exist")
            if not os.access(folder, os.W_OK):
                raise ConfigError(f"{flag} {path}: folder {folder} is not writable")
    models.check_name(c.model)
    parse_save_freq(c.save_freq)
    try:
        parse_steps_per_execution(c.steps_per_execution)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if c.checkpoint_dir:
        _check_checkpoint_dir(c.checkpoint_dir)
    _check_choice("--cluster", c.cluster, CLUSTER_MODES)
    _check_choice("--communication", c.communication, COMMUNICATIONS)
    if not (c.collective_timeout > 0 and math.isfinite(c.collective_timeout)):
        raise ConfigError(
            f"--collective-timeout must be a positive number of seconds, got {c.collective_timeout:g}"
        )
    if c.local_workers is not None and c.local_workers < 1:
        raise ConfigError(f"--local-workers must be a number of workers >= 1, got {c.local_workers}")
    return c


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    # argparse checks the flag; a config file or a TRAINING_* variable is checked here
    if value not in choices:
        raise ConfigError(f"unknown {flag} {value!r}: choose {', '.join(choices)}")


def _check_checkpoint_dir(path: str) -> None:
    """A folder that exists and is writable, or can be created (its nearest existing parent is)."""
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"--checkpoint-dir {path}: exists and is not a folder")
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--checkpoint-dir {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--checkpoint-dir {path}: folder {existing} is not writable")


def nearest_valid_batches(global_batch_size: int, replicas: int) -> list[int]:
    below = global_batch_size - global_batch_size % replicas
    above = below + replicas
    return [b for b in (below, above) if b > 0]


# The seed guide's global batch per GPU count (1 GPU 64-128, 2 GPUs 128-256, 4 GPUs 256-512): 64 to
# 128 examples per GPU keep a GPU busy; fewer leave it waiting on the all-reduce and the host.
ADVISED_PER_GPU = (64, 128)


def batch_advice(global_batch_size: int, gpus: int) -> str | None:
    """What the plan says when the per-GPU batch is small for the GPU count, or None."""
    low, high = ADVISED_PER_GPU
    if gpus < 1 or global_batch_size // gpus >= low:
        return None
    return (
        f"{global_batch_size // gpus} examples per GPU is small for {gpus} GPU(s) (the guide: "
        f"{low * gpus}-{high * gpus} global, {low}-{high} per GPU): try --global-batch-size {low * gpus} "
        "(with --scale-learning-rate linear, the learning rate follows it)"
    )


def batch_not_divisible_message(global_batch_size: int, replicas: int) -> str:
    options = " or ".join(str(b) for b in nearest_valid_batches(global_batch_size, replicas))
    return (
        f"--global-batch-size {global_batch_size} does not split evenly over {replicas} replicas: "
        f"use a multiple of {replicas}, e.g. {options}"
    )

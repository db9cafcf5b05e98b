"""Each setting's own check, as the settings table names it: `check(value, flag)` returns nothing or
raises a ConfigError that says, in one line, what is wrong and names the flag. No TensorFlow here.
"""

from __future__ import annotations

import math
import os

from training.inputs import models
from training.settings.table import Check, ConfigError

AUTO = "auto"  # --steps-per-execution: chosen from the measured step time (training.loop.steps)
MAX_STEPS = 1000  # one traced call never runs more than this many steps


def parse_steps_per_execution(text: str | int) -> int | str:
    """'auto' or a positive whole number of steps; ValueError (one line, naming the flag) otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().lower()
        if raw == AUTO:
            return AUTO
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(
                f"--steps-per-execution must be 'auto' or a number of steps >= 1, got {text!r}"
            ) from None
    if not 1 <= value <= MAX_STEPS:
        raise ValueError(
            f"--steps-per-execution must be from 1 to {MAX_STEPS} steps (or 'auto'), got {text!r}"
        )
    return value


def parse_save_freq(text: str) -> int | None:
    """--save-freq: None for "epoch" (a checkpoint at the end of each epoch), else every N steps."""
    value = text.strip().lower()
    if value == "epoch":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ConfigError(f"--save-freq must be 'epoch' or a positive number of steps, got {text!r}")


def positive_int(value: int, flag: str) -> None:
    if value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value}")


def positive_number(value: float, flag: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{flag} must be a positive number, got {value:g}")


def at_least(low: int, what: str) -> Check:
    def check(value: int, flag: str) -> None:
        if value < low:
            raise ConfigError(f"{flag} must be {what}, got {value}")

    return check


def fraction(value: float, flag: str) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"{flag} must be a fraction between 0 and 1, both excluded, got {value:g}")


def epochs_at_least_0(value: float, flag: str) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{flag} must be a number of epochs >= 0, got {value:g}")


def seconds(value: float, flag: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{flag} must be a positive number of seconds, got {value:g}")


def writable_file(value: str, flag: str) -> None:
    folder = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag} {value}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{flag} {value}: folder {folder} is not writable")


def keras_file(value: str, flag: str) -> None:
    if not value.endswith(".keras"):
        raise ConfigError(f"{flag} {value}: the file name must end in .keras")
    writable_file(value, flag)


def model_name(value: str, flag: str) -> None:
    models.check_model(value)


def importable(value: str, flag: str) -> None:
    """Comma-separated .py files that exist or modules that can be found (--custom-objects)."""
    from training.inputs import user_model

    user_model.check_custom_objects(value, flag)


def parse_profile_steps(text: str, flag: str = "--profile-steps") -> tuple[int, int]:
    """--profile-steps A:B: the first and last global step profiled (1-based, both included)."""
    first, sep, last = str(text).strip().partition(":")
    try:
        a, b = int(first), int(last)
    except ValueError:
        a, b = 0, 0
    if not sep or a < 1 or b < a:
        raise ConfigError(f"{flag} must be A:B, global steps with 1 <= A <= B (e.g. 20:24), got {text!r}")
    return a, b


def profile_steps(value: str, flag: str) -> None:
    parse_profile_steps(value, flag)


def save_freq(value: str, flag: str) -> None:
    parse_save_freq(value)


def steps_per_execution(value: str, flag: str) -> None:
    try:
        parse_steps_per_execution(value)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def checkpoint_dir(path: str, flag: str) -> None:
    """A folder that exists and is writable, or can be created (its nearest existing parent is)."""
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"{flag} {path}: exists and is not a folder")
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{flag} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: folder {existing} is not writable")

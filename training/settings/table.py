"""The machinery behind the one table of settings: each setting is a field of a frozen dataclass
declared with `setting(...)`, and everything else is derived from that declaration: its command-line
flag (`add_flags`), its TOML key and `TRAINING_*` variable (`coerce`), and its check (`check_all`).

A setting's type is its field's annotation (`int | None` is an optional int); its flag is its name
with dashes (`global_batch_size` -> `--global-batch-size`). No TensorFlow here.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cache
from typing import Any

from common.cli import number
from common.errors import UserError

# What a setting's check gets: the value and the flag it is known by; it raises a ConfigError.
Check = Callable[[Any, str], None]


class ConfigError(UserError):
    """A setting that cannot be used (a user error: one line, exit 2)."""


@dataclass(frozen=True)
class Setting:
    """One row of the table: what a field's metadata says about the setting it holds."""

    help: str | None
    group: str  # the --help section its flag is listed in
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    # the evaluate subcommand takes the flag too: True with the same help, or a help of its own
    evaluate: bool | str = False
    # a TOML number is taken as its text (`save_freq = 200` means "200")
    number_as_text: bool = False


def setting(
    default: Any,
    help: str | None = None,
    *,
    group: str,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    check: Check | None = None,
    evaluate: bool | str = False,
    number_as_text: bool = False,
) -> Any:
    """A dataclass field that is also a row of the settings table."""
    row = Setting(help, group, metavar, choices, check, evaluate, number_as_text)
    return field(default=default, metadata={"setting": row})


@dataclass(frozen=True)
class Row:
    """A setting as the derived forms need it: name, flag, type, default and its table row."""

    name: str
    kind: type  # int, float, str or bool; `optional` says whether None is allowed
    optional: bool
    default: Any
    row: Setting

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@cache
def rows(cls: type) -> tuple[Row, ...]:
    """The settings of a dataclass declared with `setting`, in declaration order."""
    hints = typing.get_type_hints(cls)  # the annotations as types (they are text under __future__)
    found = []
    for f in fields(cls):
        if "setting" not in f.metadata:
            continue
        kind, optional = _plain_type(hints[f.name])
        found.append(Row(f.name, kind, optional, _default(f), f.metadata["setting"]))
    return tuple(found)


def _plain_type(hint: Any) -> tuple[type, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:  # X | None
        return args[0], True
    return hint, False


def _default(f: Field[Any]) -> Any:
    return f.default if f.default is not MISSING else None


# -- flags ----------------------------------------------------------------------------------------


def add_flag(add: Callable[..., Any], row: Row, help_text: str | None = None) -> None:
    """Declare one setting's flag. Every default is None, so that a flag left out does not hide the
    config file's or the environment's value (flags win only where given)."""
    meta = row.row
    text = help_text if help_text is not None else meta.help
    if row.kind is bool:
        add(row.flag, action="store_true", default=None, help=text)
        return
    kwargs: dict[str, Any] = {"help": text, "metavar": meta.metavar}
    if meta.choices:
        kwargs["choices"] = meta.choices
    elif row.kind in (int, float):
        kwargs["type"] = number(row.kind)
    add(row.flag, **{k: v for k, v in kwargs.items() if v is not None})


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    groups: dict[str, argparse._ArgumentGroup],
    evaluate: bool = False,
) -> None:
    """Every setting's flag, in its group (`groups` maps the table's group names to the parser's;
    the group "*", where given, takes the settings of groups it does not name); with `evaluate`, only
    those the evaluate subcommand takes, with its help texts."""
    for row in rows(cls):
        if evaluate and not row.row.evaluate:
            continue
        help_text = row.row.evaluate if evaluate and isinstance(row.row.evaluate, str) else None
        group = groups.get(row.row.group) or groups.get("*")
        if group is None:
            group = groups[row.row.group] = parser.add_argument_group(row.row.group)
        add_flag(group.add_argument, row, help_text)


# -- files and the environment -----------------------------------------------------------------------


def coerce(row: Row, value: Any, origin: str) -> Any:
    """A value from a TOML file or a TRAINING_* variable, type-checked against the setting."""
    kind = row.kind
    if row.row.number_as_text and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and kind is not str:
        value = parse_text(value, kind, row.name, origin)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: {row.name} must be {kind.__name__}, got {value!r}")
    return value


def parse_text(text: str, kind: type, key: str, origin: str) -> Any:
    """A setting's value written as text (an environment variable), as `kind`."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{origin}: {key} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{origin}: {key} must be {kind.__name__}, got {text!r}") from None


# -- checks ----------------------------------------------------------------------------------------


def check_all(config: Any) -> None:
    """Each setting's own check (its choices, then its `check`), in table order; None (not given)
    passes for optional settings."""
    table: type = type(config)
    for row in rows(table):
        value = getattr(config, row.name)
        if value is None and row.optional:
            continue
        if row.row.choices and value not in row.row.choices:
            raise ConfigError(f"unknown {row.flag} {value!r}: choose {', '.join(row.row.choices)}")
        if row.row.check is not None:
            row.row.check(value, row.flag)

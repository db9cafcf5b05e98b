"""What the suite's command lines (`gpudiag`, `python -m training`, `python -m reports`, the sweep's
pytest options) share: the argument converters, a parser whose errors are one line, and the one
exit-code policy.

Converters are argparse `type=` callables: each turns one command-line word into a value or raises
`argparse.ArgumentTypeError` with a reason, to which argparse (and pytest) put the flag's name in
front ("argument --rounds: values must be >= 1, got 0").

The exit-code policy (`run_main`): 0 or whatever the command returns; 2 for bad input (a
`UserError`: one line on stderr); 1 for a failure the command expects (one line) and for a bug (one
"internal error" line, the traceback only with GPUDIAG_DEBUG set); 130 for Ctrl+C.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from common.errors import UsageError, UserError

__all__ = [
    "DEBUG_ENV",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Parser",
    "UsageError",
    "at_least",
    "finite_number",
    "fraction",
    "from_value_error",
    "integer",
    "integers",
    "number",
    "on_off",
    "one_line",
    "positive_number",
    "run_main",
    "size_in_bytes",
]

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_ENV = "GPUDIAG_DEBUG"


# -- converters -----------------------------------------------------------------------------------


def integer(text: str) -> int:
    """Any integer (a range check, where there is one, says why a value cannot be used)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def finite_number(text: str) -> float:
    """Any finite number: 'nan' and 'inf' parse as floats but mean no setting."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def number(kind: type) -> Callable[[str], int | float]:
    """`integer` for int, `finite_number` for float: the converter of a setting of that type."""
    return integer if kind is int else finite_number


def positive_number(unit: str = "") -> Callable[[str], float]:
    """A number > 0 ('inf' included: a duration without end), named with its unit in the messages
    ("'soon' is not a number of seconds", "must be > 0 seconds, got 0")."""
    of_unit, after = (f" of {unit}", f" {unit}") if unit else ("", "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number{of_unit}") from None
        if not value > 0:  # nan too
            raise argparse.ArgumentTypeError(f"must be > 0{after}, got {text}")
        return value

    parse.__name__ = "positive_number"
    return parse


def fraction(text: str) -> float:
    """A share from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def integers(minimum: int) -> Callable[[str], tuple[int, ...]]:
    """One value of a list option, each integer >= minimum: '4', or several in one word as '1,2,4'."""

    def parse(text: str) -> tuple[int, ...]:
        values = []
        for part in text.replace(",", " ").split():
            value = integer(part)
            if value < minimum:
                raise argparse.ArgumentTypeError(f"values must be >= {minimum}, got {value}")
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError("give at least one value")
        return tuple(values)

    parse.__name__ = "integers"
    return parse


def at_least(minimum: int) -> Callable[[str], int]:
    """One integer >= minimum, with the same messages as a list option's values."""
    several = integers(minimum)

    def parse(text: str) -> int:
        values = several(text)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"expected one integer, got {text!r}")
        return values[0]

    parse.__name__ = "integer"
    return parse


def on_off(text: str) -> bool:
    """on or off, in any case."""
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'on', 'off')")
    return value == "on"


_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.IGNORECASE)


def size_in_bytes(text: str) -> int:
    """'1K' = 1024 bytes, '256M', '1G', '2MiB', '4096' (binary units, as nccl-tests' -b/-e); at
    least 4 bytes, one float32."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1K, 64M, 1G)")
    value = int(match.group(1)) * 1024 ** " KMG".index((match.group(2) or " ").upper())
    if value < 4:
        raise argparse.ArgumentTypeError(f"sizes must be at least 4 bytes (one float32), got {text}")
    return value


def from_value_error(parse: Callable[[str], T], flag: str) -> Callable[[str], T]:
    """A converter from a parser that raises ValueError with a message naming `flag` (as a setting's
    own check does for a config file): argparse names the flag again, so the name is taken off."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag} ")) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


# -- the parser -----------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError (one line on stderr, exit 2) instead of
    printing the usage and exiting. `help_hint = True` in a subclass ends each message with
    "(try: PROG --help)"; subparsers are of the parent's class, so they say it too."""

    help_hint = False

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (try: {self.prog} --help)" if self.help_hint else message)


# -- the exit-code policy -------------------------------------------------------------------------


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's message on one line, at most `limit` characters and an ellipsis."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def run_main(
    body: Callable[[], int],
    *,
    failures: tuple[type[BaseException], ...] = (),
    prog: str = "",
    interrupted: str | None = "stopped by SIGINT",
    debug_env: str = DEBUG_ENV,
) -> int:
    """body()'s exit code, or the one its exception calls for; every message one line on stderr.

    A UserError: "error: <message>", 2. An exception of a class in `failures`: "error: <message>",
    1. KeyboardInterrupt: the line `interrupted` as given (None: nothing), 130. Anything else is a
    bug: "error: internal error: <Type>: <message> (rerun with GPUDIAG_DEBUG=1 for details)", 1,
    or the exception itself, traceback and all, when `debug_env` is set. `prog` ("gpudiag") goes in
    front of each of these messages as "gpudiag: error: ...".
    """
    prefix = f"{prog}: " if prog else ""
    try:
        return body()
    except UserError as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if interrupted is not None:
            print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if failures and isinstance(exc, failures):
            print(f"{prefix}error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if os.environ.get(debug_env):  # the traceback, for a bug report
            raise
        print(
            f"{prefix}error: internal error: {type(exc).__name__}: {one_line(exc)} "
            f"(rerun with {debug_env}=1 for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED

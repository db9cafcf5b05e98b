"""common/cli.py: the converters' values and messages, the one-line parser, and the exit-code
policy every command line shares (2 bad input, 1 failure or bug, 130 Ctrl+C, traceback only with
GPUDIAG_DEBUG)."""

from __future__ import annotations

import argparse
import math

import pytest

from common import cli
from common.errors import UsageError, UserError


@pytest.mark.parametrize(
    ("convert", "text", "value"),
    [
        (cli.integer, "-3", -3),
        (cli.finite_number, "2.5", 2.5),
        (cli.number(int), "7", 7),
        (cli.number(float), "1e3", 1000.0),
        (cli.positive_number(), "0.5", 0.5),
        (cli.positive_number("seconds"), "inf", math.inf),
        (cli.fraction, "0", 0.0),
        (cli.fraction, "1", 1.0),
        (cli.integers(1), "4,1 2", (4, 1, 2)),
        (cli.at_least(0), "0", 0),
        (cli.on_off, " ON", True),
        (cli.on_off, "off", False),
        (cli.size_in_bytes, "64k", 65536),
        (cli.size_in_bytes, "2MiB", 2 * 2**20),
        (cli.size_in_bytes, "1G", 2**30),
        (cli.size_in_bytes, "4096", 4096),
    ],
)
def test_converters_take_what_they_should(convert, text, value):
    assert convert(text) == value


@pytest.mark.parametrize(
    ("convert", "text", "message"),
    [
        (cli.integer, "x", "'x' is not an integer"),
        (cli.integer, "1.5", "'1.5' is not an integer"),
        (cli.finite_number, "lots", "'lots' is not a number"),
        (cli.finite_number, "nan", "'nan' is not a finite number"),
        (cli.finite_number, "-inf", "'-inf' is not a finite number"),
        (cli.positive_number(), "x", "'x' is not a number"),
        (cli.positive_number(), "0", "must be > 0, got 0"),
        (cli.positive_number(), "nan", "must be > 0, got nan"),
        (cli.positive_number("seconds"), "soon", "'soon' is not a number of seconds"),
        (cli.positive_number("seconds"), "-1", "must be > 0 seconds, got -1"),
        (cli.fraction, "half", "'half' is not a number"),
        (cli.fraction, "1.5", "must be from 0 to 1, got 1.5"),
        (cli.integers(1), "0", "values must be >= 1, got 0"),
        (cli.integers(1), "2,x", "'x' is not an integer"),
        (cli.integers(1), " , ", "give at least one value"),
        (cli.at_least(1), "1,2", "expected one integer, got '1,2'"),
        (cli.at_least(0), "-1", "values must be >= 0, got -1"),
        (cli.on_off, "maybe", "invalid choice: 'maybe' (choose from 'on', 'off')"),
        (cli.size_in_bytes, "2", "sizes must be at least 4 bytes (one float32), got 2"),
        (cli.size_in_bytes, "big", "'big' is not a size (e.g. 1K, 64M, 1G)"),
    ],
)
def test_converters_refuse_with_a_reason(convert, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        convert(text)
    assert str(caught.value) == message


def test_a_value_error_naming_the_flag_is_named_once():
    def parse(text: str) -> int:
        raise ValueError(f"--steps must be a number, got {text!r}")

    convert = cli.from_value_error(parse, "--steps")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a number, got 'x'$"):
        convert("x")
    assert cli.from_value_error(int, "--n")("3") == 3


def test_the_parser_raises_one_line_usage_errors_naming_the_flag():
    parser = cli.Parser(prog="tool")
    parser.add_argument("--rounds", type=cli.at_least(1))
    with pytest.raises(UsageError) as caught:
        parser.parse_args(["--rounds", "0"])
    assert str(caught.value) == "argument --rounds: values must be >= 1, got 0"
    assert isinstance(caught.value, UserError)


def test_a_parser_with_the_help_hint_says_it_in_its_subcommands_too():
    class Hinted(cli.Parser):
        help_hint = True

    parser = Hinted(prog="tool")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("go").add_argument("--n", type=cli.integer)
    with pytest.raises(UsageError, match=r"^unrecognized arguments: --bogus \(try: tool --help\)$"):
        parser.parse_args(["go", "--bogus"])
    with pytest.raises(UsageError, match=r"^argument --n: 'x' is not an integer \(try: tool go --help\)$"):
        parser.parse_args(["go", "--n", "x"])


# -- run_main --------------------------------------------------------------------------------------


class Failed(RuntimeError):
    pass


def raising(exc: BaseException):
    def body() -> int:
        raise exc

    return body


def test_the_body_s_code_is_the_exit_code(capsys):
    assert cli.run_main(lambda: 0) == 0
    assert cli.run_main(lambda: 1) == 1
    assert capsys.readouterr().err == ""


def test_bad_input_is_one_line_and_2(capsys):
    assert cli.run_main(raising(UserError("--rounds must be >= 1"))) == 2
    assert capsys.readouterr().err == "error: --rounds must be >= 1\n"
    assert cli.run_main(raising(UsageError("bad flag")), prog="gpudiag") == 2
    assert capsys.readouterr().err == "gpudiag: error: bad flag\n"


def test_an_expected_failure_is_one_line_and_1(capsys):
    assert cli.run_main(raising(Failed("no GPU")), failures=(Failed,)) == 1
    assert capsys.readouterr().err == "error: no GPU\n"


def test_a_bug_is_one_internal_error_line_and_1(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run_main(raising(ValueError("a bug\n  on two lines"))) == 1
    assert capsys.readouterr().err == (
        "error: internal error: ValueError: a bug on two lines (rerun with GPUDIAG_DEBUG=1 for details)\n"
    )
    # a failure class of the caller's does not swallow other errors
    assert cli.run_main(raising(KeyError("k")), failures=(Failed,), prog="gpudiag") == 1
    assert capsys.readouterr().err.startswith("gpudiag: error: internal error: KeyError: 'k' (rerun")


def test_a_long_message_is_cut(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run_main(raising(RuntimeError("x" * 600))) == 1
    line = capsys.readouterr().err
    assert "x" * 500 + "... (rerun" in line and "x" * 501 not in line


def test_with_gpudiag_debug_a_bug_raises(monkeypatch):
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="a bug"):
        cli.run_main(raising(ValueError("a bug")))


def test_ctrl_c_is_130_with_the_caller_s_line(capsys):
    assert cli.run_main(raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "stopped by SIGINT\n"
    assert cli.run_main(raising(KeyboardInterrupt()), interrupted="\nstopped: nothing saved") == 130
    assert capsys.readouterr().err == "\nstopped: nothing saved\n"
    assert cli.run_main(raising(KeyboardInterrupt()), interrupted=None) == 130
    assert capsys.readouterr().err == ""

"""The scaling sweep's options: declared once with typed converters (`add_sweep_options`), so pytest
reports a bad value as a usage error naming the flag, then checked together and turned into a
device plan by `check_options`, before any worker starts or any file is written.

No TensorFlow here: `training.devices.setup` plans without it and `training.inputs.models` lists
names without it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from diagnostics.selection import SelectionError, SelectionOptions
from reports.variants import AXES
from reports.write import ReportDirError, check_report_dir
from training.devices.setup import CROSS_DEVICE_OPS, DeviceFlagError, DevicePlan, plan_devices
from training.inputs import models
from training.loop.steps import parse_steps_per_execution

# pytest's option destinations share one namespace: every sweep option's dest starts with this
PREFIX = "sweep_"
DEFAULT_BATCH_SIZES = (32, 64, 128)
DEFAULT_STEPS = 20
DEFAULT_ROUNDS = 10
DEFAULT_WARMUP_STEPS = 10
DEFAULT_REPORT_DIR = "reports/output"
# 1 KiB to 256 MiB in steps of 4 (nccl-tests sweeps in steps of 2; 4 halves the time)
DEFAULT_ALLREDUCE_BYTES = tuple(2**e for e in range(10, 29, 2))
DEFAULT_ALLREDUCE_ITERS = 20
DEFAULT_WORKER_TIMEOUT = 300.0
DEFAULT_WORKER_START_TIMEOUT = 600.0  # a new GPU generation can JIT-compile PTX for minutes
# The share of wall time a sweep must spend in measured or warm-up steps (the rest is pytest,
# TensorFlow starts, tracing, IPC): measured 74% on a default CPU sweep.
DEFAULT_HARNESS_MIN_SHARE = 0.6
SCALING_MODES = ("weak", "strong", "both")


class SweepUsageError(UserError):
    """Options that cannot run together or on these devices (one line for pytest's usage error)."""


@dataclass(frozen=True)
class SweepOptions:
    gpu_counts: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    scaling: str
    model: str
    steps: int
    rounds: int
    warmup_steps: int
    report_dir: Path
    selection: SelectionOptions
    cpu_replicas: int | None
    allreduce_bytes: tuple[int, ...]
    allreduce_iters: int
    worker_timeout: float
    worker_start_timeout: float
    harness_min_share: float = DEFAULT_HARNESS_MIN_SHARE
    # the variant axes: each a list, the default value first where it was given
    jit_compile: tuple[bool, ...] = (False,)
    mixed_precision: tuple[bool, ...] = (False,)
    cross_device_ops: tuple[str, ...] = ("auto",)
    steps_per_execution: tuple[int | str, ...] = ("auto",)
    device_kind: str = "cpu"  # the plan's: which cross-device ops can run here
    image_size: int | None = None  # synthetic images of this side (None: the trainer's 32x32x3)
    data: Path | None = None  # the user's data (.npz or image folder) instead of synthetic tensors


# -- converters: one command-line value each; argparse prefixes the flag to their message ---------


def share(text: str) -> float:
    """A fraction from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def on_off(text: str) -> bool:
    """One value of --jit-compile / --mixed-precision: on or off."""
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'on', 'off')")
    return value == "on"


def steps_per_call(text: str) -> int | str:
    """One value of --steps-per-execution: auto, or a number of training steps per traced call."""
    try:
        return parse_steps_per_execution(text)
    except ValueError as exc:
        # the trainer's message names the flag: argparse names it again
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--steps-per-execution ")) from None


def _integers(text: str, minimum: int) -> tuple[int, ...]:
    values = []
    for part in text.replace(",", " ").split():  # "1,2,4" is one value as well as "1 2 4"
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"values must be >= {minimum}, got {value}")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return tuple(values)


def positive_ints(text: str) -> tuple[int, ...]:
    """One value of a list option (--gpus, --batch-sizes): '4', or several as '1,2,4'."""
    return _integers(text, 1)


def _one_integer(text: str, minimum: int) -> int:
    values = _integers(text, minimum)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one integer, got {text!r}")
    return values[0]


def positive_int(text: str) -> int:
    return _one_integer(text, 1)


def non_negative_int(text: str) -> int:
    return _one_integer(text, 0)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.IGNORECASE)


def size_in_bytes(text: str) -> int:
    """'1K' = 1024 bytes, '256M', '1G', '4096' (binary units, as nccl-tests' -b/-e)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1K, 64M, 1G)")
    value = int(match.group(1)) * 1024 ** " KMG".index((match.group(2) or " ").upper())
    if value < 4:
        raise argparse.ArgumentTypeError(f"sizes must be at least 4 bytes (one float32), got {text}")
    return value


# -- declaration ----------------------------------------------------------------------------------


def add_sweep_options(add: Callable[..., Any]) -> None:
    """Declare the sweep's own options with `add` (pytest's `group.addoption`, or argparse's
    `add_argument` in tests); the GPU selection flags come from
    `add_selection_options(add, prefix=PREFIX)`. List options default to None: the default GPU
    counts depend on the devices."""
    add(
        "--gpus",
        nargs="+",
        type=positive_ints,
        dest=PREFIX + "gpus",
        metavar="N",
        help="GPU counts (default 1 2 4 ... up to the number selected)",
    )
    add(
        "--batch-sizes",
        nargs="+",
        type=positive_ints,
        dest=PREFIX + "batch_sizes",
        metavar="B",
        help="batch sizes per GPU (default 32 64 128)",
    )
    add(
        "--scaling",
        choices=SCALING_MODES,
        default="weak",
        dest=PREFIX + "scaling",
        help="weak keeps the batch per GPU, strong the global batch (default weak)",
    )
    add(
        "--model",
        choices=models.names(),
        default="cnn",
        dest=PREFIX + "model",
        help="model to train (default cnn)",
    )
    add(
        "--steps",
        type=positive_int,
        default=DEFAULT_STEPS,
        dest=PREFIX + "steps",
        metavar="K",
        help=f"steps per round (default {DEFAULT_STEPS})",
    )
    add(
        "--rounds",
        type=positive_int,
        default=DEFAULT_ROUNDS,
        dest=PREFIX + "rounds",
        help=f"measured rounds (default {DEFAULT_ROUNDS})",
    )
    add(
        "--warmup-steps",
        type=non_negative_int,
        default=DEFAULT_WARMUP_STEPS,
        dest=PREFIX + "warmup_steps",
        help=f"warm-up steps before the rounds (default {DEFAULT_WARMUP_STEPS})",
    )
    add(
        "--report-dir",
        type=Path,
        default=Path(DEFAULT_REPORT_DIR),
        dest=PREFIX + "report_dir",
        metavar="DIR",
        help=f"where the report goes (default {DEFAULT_REPORT_DIR}/)",
    )
    add(
        "--cpu-replicas",
        type=positive_int,
        dest=PREFIX + "cpu_replicas",
        metavar="N",
        help="no GPU: sweep over up to N CPU logical devices",
    )
    add(
        "--allreduce-bytes",
        nargs="+",
        type=size_in_bytes,
        dest=PREFIX + "allreduce_bytes",
        metavar="SIZE",
        help="all-reduce message sizes, e.g. 1K 1M 256M (default 1K to 256M in steps of 4)",
    )
    add(
        "--allreduce-iters",
        type=positive_int,
        default=DEFAULT_ALLREDUCE_ITERS,
        dest=PREFIX + "allreduce_iters",
        help=f"all-reduces per round (default {DEFAULT_ALLREDUCE_ITERS}, fewer for large messages)",
    )
    add(
        "--worker-timeout",
        type=seconds,
        default=DEFAULT_WORKER_TIMEOUT,
        dest=PREFIX + "worker_timeout",
        metavar="S",
        help="seconds a worker may take to answer one request before it is killed (default 300)",
    )
    add(
        "--worker-start-timeout",
        type=seconds,
        default=DEFAULT_WORKER_START_TIMEOUT,
        dest=PREFIX + "worker_start_timeout",
        metavar="S",
        help="seconds a worker may take to start TensorFlow (default 600)",
    )
    add(
        "--jit-compile",
        nargs="+",
        type=on_off,
        dest=PREFIX + "jit_compile",
        metavar="{off,on}",
        help="variant axis: XLA for each replica's step, e.g. `off on` measures both (default off)",
    )
    add(
        "--mixed-precision",
        nargs="+",
        type=on_off,
        dest=PREFIX + "mixed_precision",
        metavar="{off,on}",
        help="variant axis: mixed_float16 with loss scaling, e.g. `off on` (default off)",
    )
    add(
        "--cross-device-ops",
        nargs="+",
        choices=CROSS_DEVICE_OPS,
        dest=PREFIX + "cross_device_ops",
        metavar="OPS",
        help=f"variant axis: the strategy's all-reduce, any of {', '.join(CROSS_DEVICE_OPS)} (default auto; "
        "one worker per device count and value; those these devices cannot run are recorded as not "
        "applicable)",
    )
    add(
        "--steps-per-execution",
        nargs="+",
        type=steps_per_call,
        dest=PREFIX + "steps_per_execution",
        metavar="K",
        help="variant axis: training steps per traced call, auto or a number, e.g. `auto 1 20` "
        "(default auto, as the trainer; each call ends on a host fetch, as in training)",
    )
    add(
        "--image-size",
        type=positive_int,
        dest=PREFIX + "image_size",
        metavar="N",
        help="synthetic N x N x 3 images (default 32; 224 compares with published ResNet-50 figures)",
    )
    add(
        "--data",
        type=Path,
        dest=PREFIX + "data",
        metavar="PATH",
        help="measure on this data (.npz or image folder, as `python -m training --data`) instead of "
        "synthetic tensors",
    )
    add(
        "--harness-min-share",
        type=share,
        default=DEFAULT_HARNESS_MIN_SHARE,
        dest=PREFIX + "harness_min_share",
        metavar="F",
        help=f"fail unless this share of the sweep's wall time went to measured or warm-up steps "
        f"(default {DEFAULT_HARNESS_MIN_SHARE}; a sweep of seconds is mostly TensorFlow's start: use 0)",
    )


# -- the checks that need several options, the file system or the devices -------------------------


def default_counts(selected: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the number selected, and that number itself."""
    counts = [n for n in (2**e for e in range(0, 12)) if n <= selected]
    if selected not in counts:
        counts.append(selected)
    return tuple(counts)


def _sorted_set(values: Iterable[int | tuple[int, ...]] | None) -> tuple[int, ...] | None:
    if values is None:
        return None
    flat = {v for value in values for v in (value if isinstance(value, tuple) else (value,))}
    return tuple(sorted(flat))


def axis_values(axis: str, given: Iterable[Any] | None) -> tuple[Any, ...]:
    """A variant axis' values without repeats, its default first where given (the baseline the
    report measures the others against), the rest in the order given."""
    default = AXES[axis]
    values = list(dict.fromkeys(given)) if given else [default]
    return tuple(sorted(values, key=lambda v: v != default))


def check_options(get: Callable[[str], Any]) -> tuple[SweepOptions, DevicePlan]:
    """The sweep's options and device plan from the converted option values; raises
    SweepUsageError for the first problem. Creates nothing on disk.

    `get(name)` returns the value of the option whose dest is PREFIX + name (None where a list
    option or a selection flag was not given).
    """
    report_dir = Path(get("report_dir"))
    try:
        check_report_dir(report_dir)
    except ReportDirError as exc:
        raise SweepUsageError(f"--report-dir: {exc}") from None
    data: Path | None = get("data")
    if data is not None and get("image_size") is not None:
        raise SweepUsageError("--image-size sets the size of synthetic images: drop it with --data")
    if data is not None and not data.exists():
        raise SweepUsageError(f"--data {data}: no such file or folder")
    selection = SelectionOptions.from_values(get)
    cpu_replicas: int | None = get("cpu_replicas")
    try:
        plan = plan_devices(selection, cpu_replicas)
    except (SelectionError, DeviceFlagError) as exc:
        raise SweepUsageError(str(exc)) from None
    selected = plan.num_replicas
    counts = _sorted_set(get("gpus"))
    if counts is None:
        counts = default_counts(selected)
    elif max(counts) > selected:
        what = (
            f"--cpu-replicas {selected}"
            if cpu_replicas is not None
            else f"{selected} GPU(s) selected in {selection.mode} mode"
            if plan.kind == "gpu"
            else f"no GPU is usable ({plan.fallback_reason}); use --cpu-replicas N"
        )
        raise SweepUsageError(f"--gpus {max(counts)}: more devices than selected ({what})")
    options = SweepOptions(
        gpu_counts=counts,
        batch_sizes=_sorted_set(get("batch_sizes")) or DEFAULT_BATCH_SIZES,
        scaling=get("scaling"),
        model=get("model"),
        steps=get("steps"),
        rounds=get("rounds"),
        warmup_steps=get("warmup_steps"),
        report_dir=report_dir,
        selection=selection,
        cpu_replicas=cpu_replicas,
        allreduce_bytes=_sorted_set(get("allreduce_bytes")) or DEFAULT_ALLREDUCE_BYTES,
        allreduce_iters=get("allreduce_iters"),
        worker_timeout=get("worker_timeout"),
        worker_start_timeout=get("worker_start_timeout"),
        harness_min_share=get("harness_min_share"),
        jit_compile=axis_values("jit_compile", get("jit_compile")),
        mixed_precision=axis_values("mixed_precision", get("mixed_precision")),
        cross_device_ops=axis_values("cross_device_ops", get("cross_device_ops")),
        steps_per_execution=axis_values("steps_per_execution", get("steps_per_execution")),
        device_kind=plan.kind,
        image_size=get("image_size"),
        data=data.absolute() if data is not None else None,
    )
    return options, plan

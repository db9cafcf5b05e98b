"""The scaling sweep's options, declared once: each is a field of `SweepOptions` made with
`option(...)` (its flag, converter, default, help and check), as the trainer's settings are fields
of `TrainConfig`. From that one table come pytest's options (`add_sweep_options`: a bad value is a
usage error naming the flag), and the checked `SweepOptions` with its device plan (`check_options`,
which adds what needs several options, the file system or the devices), before any worker starts or
any file is written.

No TensorFlow here: `training.devices.setup` plans without it and `training.inputs.models` lists
names without it.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

import sweep_plan

from common.cli import at_least, fraction, from_value_error, integers, on_off, positive_number, size_in_bytes
from common.errors import UserError
from diagnostics.cluster import CLUSTER_MODES
from diagnostics.selection import SelectionOptions, add_selection_options
from reports.variants import AXES
from reports.write import ReportDirError, check_report_dir
from training.devices.setup import CROSS_DEVICE_OPS, DeviceFlagError, DevicePlan, plan_devices
from training.inputs import models
from training.loop.steps import parse_steps_per_execution
from training.settings.config import COLLECTIVE_TIMEOUT_S

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
# TensorFlow starts, tracing, IPC): none by default, since a user's small sweep is mostly TensorFlow
# starting and the report states the share; bench/test_harness_share.py holds a fixed sweep of ours
# to 0.6 (a self-benchmark).
DEFAULT_HARNESS_MIN_SHARE = 0.0
SCALING_MODES = ("weak", "strong", "both")


class SweepUsageError(UserError):
    """Options that cannot run together or on these devices (one line for pytest's usage error)."""


# -- the table's machinery --------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One row of the table: what a SweepOptions field's metadata says about the option that sets it.

    kind: "one" value; "set" (several, each may be '1,2,4': sorted, without repeats, the field's
    default where none is given); "axis" (a variant axis: several, without repeats, the default value
    first, the baseline the report measures the others against).
    """

    help: str
    flag: str | None = None  # default: the field's name with dashes
    convert: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    metavar: str | None = None
    kind: str = "one"
    # the given value -> the field's value; raises SweepUsageError (never sees None)
    check: Callable[[Any], Any] | None = None


def option(default: Any, help: str, **row: Any) -> Any:
    """A SweepOptions field that is also a row of the options table."""
    return field(default=default, metadata={"option": Option(help, **row)})


@dataclass(frozen=True)
class Row:
    """An option as the derived forms need it: the field it sets and its table row."""

    field: Field[Any]
    option: Option

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.field.name.replace("_", "-")

    @property
    def name(self) -> str:
        """The option's dest without PREFIX."""
        return self.flag.removeprefix("--").replace("-", "_")

    def declare(self, add: Callable[..., Any]) -> None:
        opt = self.option
        declared: dict[str, Any] = {
            "dest": PREFIX + self.name,
            "help": opt.help,
            "type": opt.convert,
            "choices": opt.choices,
            "metavar": opt.metavar,
            # several values: None when not given (the default may depend on the devices)
            "nargs": "+" if opt.kind != "one" else None,
            "default": self.field.default if opt.kind == "one" else None,
        }
        add(self.flag, **{k: v for k, v in declared.items() if v is not None})

    def value(self, given: Any) -> Any:
        """The field's value from the option's converted value (None: not given)."""
        if self.option.kind == "axis":
            return axis_values(self.field.name, given)
        if self.option.kind == "set":
            given = _sorted_set(given)
        if given is not None and self.option.check is not None:
            given = self.option.check(given)
        return self.field.default if given is None else given


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


def _report_dir(path: Path) -> Path:
    try:
        check_report_dir(path)
    except ReportDirError as exc:
        raise SweepUsageError(f"--report-dir: {exc}") from None
    return path


def _model(name: str) -> str:
    """A built-in model, or a user's, checked as far as the trainer checks it before TensorFlow
    (argparse's usage error then names the flag)."""
    try:
        models.check_model(name)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _data(path: Path) -> Path:
    if glob.has_magic(str(path)):  # TFRecord shards, as the trainer takes them: 'train-*'
        if not glob.glob(str(path)):
            raise SweepUsageError(f"--data {path}: no file matches")
    elif not path.exists():
        raise SweepUsageError(f"--data {path}: no such file or folder")
    return path.absolute()


# -- the table ---------------------------------------------------------------------------------------

_positive_ints = integers(1)
_positive_int = at_least(1)
_seconds = positive_number("seconds")
_ON_OFF = "{off,on}"


@dataclass(frozen=True)
class SweepOptions:
    """Every option of a sweep, one field each; `selection` and `device_kind` come from the GPU
    selection flags and the device plan. An empty `gpu_counts` is "1, 2, 4, ... up to the devices
    selected", which `check_options` resolves."""

    gpu_counts: tuple[int, ...] = option(
        (),
        "GPU counts (default 1 2 4 ... up to the number selected)",
        flag="--gpus",
        convert=_positive_ints,
        metavar="N",
        kind="set",
    )
    batch_sizes: tuple[int, ...] = option(
        DEFAULT_BATCH_SIZES,
        "batch sizes per GPU (default 32 64 128)",
        convert=_positive_ints,
        metavar="B",
        kind="set",
    )
    scaling: str = option(
        "weak", "weak keeps the batch per GPU, strong the global batch (default weak)", choices=SCALING_MODES
    )
    model: str = option(
        "cnn",
        f"model to train: {', '.join(models.names())} (default cnn), or your own as the trainer takes "
        "it (PATH.py:FUNCTION, package.module:FUNCTION, MODEL.keras)",
        convert=_model,
        metavar="MODEL",
    )
    steps: int = option(
        DEFAULT_STEPS, f"steps per round (default {DEFAULT_STEPS})", convert=_positive_int, metavar="K"
    )
    rounds: int = option(DEFAULT_ROUNDS, f"measured rounds (default {DEFAULT_ROUNDS})", convert=_positive_int)
    warmup_steps: int = option(
        DEFAULT_WARMUP_STEPS,
        f"warm-up steps before the rounds (default {DEFAULT_WARMUP_STEPS})",
        convert=at_least(0),
    )
    report_dir: Path = option(  # noqa: RUF009 (option() makes a field; a Path is immutable)
        Path(DEFAULT_REPORT_DIR),
        f"where the report goes (default {DEFAULT_REPORT_DIR}/)",
        convert=Path,
        metavar="DIR",
        check=_report_dir,
    )
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    cpu_replicas: int | None = option(
        None, "no GPU: sweep over up to N CPU logical devices", convert=_positive_int, metavar="N"
    )
    allreduce_bytes: tuple[int, ...] = option(
        DEFAULT_ALLREDUCE_BYTES,
        "all-reduce message sizes, e.g. 1K 1M 256M (default 1K to 256M in steps of 4)",
        convert=size_in_bytes,
        metavar="SIZE",
        kind="set",
    )
    allreduce_iters: int = option(
        DEFAULT_ALLREDUCE_ITERS,
        f"all-reduces per round (default {DEFAULT_ALLREDUCE_ITERS}, fewer for large messages)",
        convert=_positive_int,
    )
    worker_timeout: float = option(
        DEFAULT_WORKER_TIMEOUT,
        "seconds a worker may take to answer one request before it is killed (default 300)",
        convert=_seconds,
        metavar="S",
    )
    worker_start_timeout: float = option(
        DEFAULT_WORKER_START_TIMEOUT,
        "seconds a worker may take to start TensorFlow (default 600)",
        convert=_seconds,
        metavar="S",
    )
    jit_compile: tuple[bool, ...] = option(
        (False,),
        "variant axis: XLA for each replica's step, e.g. `off on` measures both (default off)",
        convert=on_off,
        metavar=_ON_OFF,
        kind="axis",
    )
    mixed_precision: tuple[bool, ...] = option(
        (False,),
        "variant axis: mixed_float16 with loss scaling, e.g. `off on` (default off)",
        convert=on_off,
        metavar=_ON_OFF,
        kind="axis",
    )
    cross_device_ops: tuple[str, ...] = option(
        ("auto",),
        f"variant axis: the strategy's all-reduce, any of {', '.join(CROSS_DEVICE_OPS)} (default auto; "
        "one worker per device count and value; those these devices cannot run are recorded as not "
        "applicable)",
        choices=CROSS_DEVICE_OPS,
        metavar="OPS",
        kind="axis",
    )
    steps_per_execution: tuple[int | str, ...] = option(
        ("auto",),
        "variant axis: training steps per traced call, auto or a number, e.g. `auto 1 20` "
        "(default auto, as the trainer; each call ends on a host fetch, as in training)",
        convert=from_value_error(parse_steps_per_execution, "--steps-per-execution"),
        metavar="K",
        kind="axis",
    )
    device_kind: str = "cpu"  # the plan's: which cross-device ops can run here
    # the plan's too: (device count, why XLA cannot compile for those GPUs) where it cannot
    xla_not_applicable: tuple[tuple[int, str], ...] = ()
    image_size: int | None = option(
        None,
        "synthetic N x N x 3 images (default 32; 224 compares with published ResNet-50 figures)",
        convert=_positive_int,
        metavar="N",
    )
    data: Path | None = option(  # noqa: RUF009 (option() makes a field; a Path is immutable)
        None,
        "measure on this data instead of synthetic tensors, as `python -m training --data` takes it: "
        ".npz in memory, an image folder or TFRecords (a folder, a file or a glob) streamed",
        convert=Path,
        metavar="PATH",
        check=_data,
    )
    cluster: str = option(
        "auto",
        "across machines, as the trainer: auto (TF_CONFIG if set, else a Slurm step of several tasks, else "
        "this machine), tf-config, slurm or none; every worker runs the same command, the chief writes",
        choices=CLUSTER_MODES,
    )
    local_workers: int | None = option(
        None,
        "a cluster of N workers on this machine (localhost), the GPUs split between them",
        convert=_positive_int,
    )
    collective_timeout: float = option(
        COLLECTIVE_TIMEOUT_S,
        f"across workers: seconds a collective waits for a peer (default {COLLECTIVE_TIMEOUT_S:g})",
        convert=_seconds,
        metavar="S",
    )
    placement: sweep_plan.Placement = field(default_factory=sweep_plan.Placement)  # from the three above
    harness_min_share: float = option(
        DEFAULT_HARNESS_MIN_SHARE,
        "fail unless this share of the sweep's wall time went to measured or warm-up steps (default 0: "
        "the report states the share, nothing is asserted; a sweep of seconds is mostly TensorFlow's start)",
        convert=fraction,
        metavar="F",
    )


ROWS = tuple(Row(f, f.metadata["option"]) for f in fields(SweepOptions) if "option" in f.metadata)


# -- what derives from the table ----------------------------------------------------------------------


def add_sweep_options(add: Callable[..., Any]) -> None:
    """Declare every option of the sweep with `add` (pytest's `group.addoption`, or argparse's
    `add_argument` in tests): the table's, then the GPU selection flags of `python -m training` and
    `gpudiag`, with the same converters and checks."""
    for row in ROWS:
        row.declare(add)
    add_selection_options(add, prefix=PREFIX)


def check_options(
    get: Callable[[str], Any], env: Mapping[str, str] | None = None
) -> tuple[SweepOptions, DevicePlan]:
    """The sweep's options and this process's device plan from the converted option values (and
    `env`, default os.environ: TF_CONFIG, Slurm); raises SweepUsageError for the first problem.
    Creates nothing on disk.

    `get(name)` returns the value of the option whose dest is PREFIX + name (None where a list
    option or a selection flag was not given).
    """
    if get("data") is not None and get("image_size") is not None:
        raise SweepUsageError("--image-size sets the size of synthetic images: drop it with --data")
    values = {row.field.name: row.value(get(row.name)) for row in ROWS}
    selection = SelectionOptions.from_values(get)
    try:
        plan = plan_devices(selection, values["cpu_replicas"])
        placement, plan = sweep_plan.place(
            values["cluster"], values["local_workers"], plan, os.environ if env is None else env
        )
        sweep_plan.check_variants(values["cross_device_ops"], placement)
        what = sweep_plan.selected(plan, selection, values["cpu_replicas"])
        counts = sweep_plan.device_counts(values["gpu_counts"], plan, placement, what)
    except (UserError, DeviceFlagError) as exc:
        raise SweepUsageError(str(exc)) from None
    options = SweepOptions(
        **{**values, "gpu_counts": counts},
        selection=selection,
        device_kind=plan.kind,
        xla_not_applicable=sweep_plan.xla_not_applicable(plan, counts),
        placement=placement,
    )
    return options, plan

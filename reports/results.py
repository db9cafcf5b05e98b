"""The sweep's raw results (schema gpudiag-sweep/1): what `bench/` writes and every report reads,
as typed rows. The dataclasses below are the schema: their fields are the JSON keys (one codec,
reports/codec.py), a field without a default is one a file must have, and the comment beside a
field says what it holds. `Results.to_json()` writes a file, `load`/`validate` read one.

The raw per-round times are the source of truth; every derived figure is recomputed from them, so
a saved results file re-renders into the same report on any machine. A file written before the
variant axes, `image_size` and `data` existed reads as one default variant (reports/variants.py);
a key this code does not know is kept in `extra` and written back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import read_json
from reports.codec import OMIT_WHEN_EMPTY, fields_to_json, from_json

SCHEMA = "gpudiag-sweep/1"
REPORT_SCHEMA = "gpudiag-scaling-report/1"


class ResultsError(UserError):
    """A results file that cannot be rendered: names the file and what is wrong."""


@dataclass(kw_only=True)
class Row:
    """One configuration's timed rounds, whatever was measured."""

    gpus: int
    round_seconds: list[float]  # each measured round, warm-up excluded: every figure's source
    warmup_seconds: list[float] | None = None
    prepare_seconds: float | None = None  # building and tracing, not timed
    devices: list[str] | None = None  # the worker's devices, as TensorFlow names them
    gpu_names: list[str] | None = None  # NVML names of its GPUs (datasheet peaks are looked up by them)
    # axis -> value (reports/variants.py); the input pipeline depends on no axis and has none
    variant: dict[str, Any] | None = field(default=None, metadata=OMIT_WHEN_EMPTY)
    # processes of the cluster the row ran on, each with `gpus` devices (None: one process)
    workers: int | None = field(default=None, metadata=OMIT_WHEN_EMPTY)
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class BatchRow(Row):
    """Steps of a global batch: training, or the input pipeline alone."""

    batch_per_gpu: int
    global_batch: int
    steps: int  # per round
    warmup_steps: int | None = None

    def rates(self) -> list[float]:
        """Samples/s of each round."""
        return [self.global_batch * self.steps / s for s in self.round_seconds]


@dataclass(kw_only=True)
class InputRow(BatchRow):
    """The trainer's tf.data pipeline, distributed to the replicas, no model (depends on no variant)."""


@dataclass(kw_only=True)
class GpuClocks:
    """One GPU of a training case, from NVML's samples during its measured rounds."""

    gpu: int  # NVML index
    samples: int
    clocks_event_reasons: list[str] | None = None  # every reason seen (NVML names; None: not reported)
    throttled_samples: int = 0  # samples with a throttling reason (diagnostics.monitor.throttling)
    sm_clock_mhz_median: float | None = None
    sm_clock_mhz_min: int | None = None
    sm_clock_max_mhz: int | None = None  # the GPU's top SM clock
    temperature_c_max: float | None = None
    power_w_mean: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class Clocks:
    """A training case's GPUs while it was measured (bench/sweep.py `gpu_clocks`)."""

    gpus: list[GpuClocks] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class TrainRow(BatchRow):
    flops_per_sample: float | None = None  # training FLOPs: 6 x the Conv/Dense multiply-accumulates
    gradient_bytes: int | None = None  # what one all-reduce of the gradients moves
    trainable_params: int | None = None
    build_seconds: float | None = None
    dtype_policy: str | None = None  # what the variant ran as: float32 / mixed_float16
    input_shape: list[int] | None = None
    examples: int | None = None
    first_step_seconds: float | None = None  # tracing: the first step
    loss: float | None = None  # after the last round
    calls_per_round: int | None = None  # traced calls per round (with auto: the K it settled on)
    utilization: dict[str, list[float]] | None = None  # NVML index (text) -> % samples, rounds only
    # each GPU's clocks, clock event reasons, heat and power over the measured rounds (None: CPU devices)
    clocks: Clocks | None = field(default=None, metadata=OMIT_WHEN_EMPTY)
    # with --data: the same case on synthetic images of the data's size (the sweep's companion
    # case), kept inside its real-data row so that no series, variant, compare or merge counts it
    synthetic: TrainRow | None = field(default=None, metadata=OMIT_WHEN_EMPTY)


@dataclass(kw_only=True)
class AllreduceRow(Row):
    bytes: int  # float32 message per replica
    iters: int  # chained all-reduces per round


@dataclass(kw_only=True)
class Failure:
    """A case that did not complete."""

    benchmark: str | None = None  # train | input | allreduce
    gpus: int | None = None
    batch_per_gpu: int | None = None
    bytes: int | None = None
    variant: dict[str, Any] | None = None
    error: str | None = None  # oom | error | crash | timeout | start | lost (a peer of a cluster)
    message: str = ""
    summary: str = ""  # failure_summary(): 'OOM at 256 per GPU on 2 GPUs'
    workers: int | None = field(default=None, metadata=OMIT_WHEN_EMPTY)  # as Row.workers
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class NotApplicable:
    """A variant recorded instead of run: these devices cannot run it."""

    gpus: int
    variant: dict[str, Any]
    reason: str


@dataclass(kw_only=True)
class Variants:
    axes: dict[str, list[Any]] = field(default_factory=dict)  # axis -> the values swept
    baseline: dict[str, Any] = field(default_factory=dict)  # what every speedup is measured against
    not_applicable: list[NotApplicable] = field(default_factory=list)


@dataclass(kw_only=True)
class Method:
    steps_per_round: int | None = None
    rounds: int | None = None
    warmup_steps: int | None = None
    warmup_rounds: int | None = None
    allreduce_iters: int | None = None
    allreduce_bytes_per_round: int | None = None
    allreduce_unroll: int | None = None  # all-reduces to one traced call
    statistic: str | None = None
    timer: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class Harness:
    """Where the sweep's wall time went."""

    wall_seconds: float | None = None
    benchmark_seconds: float | None = None  # measured and warm-up rounds
    worker_start_seconds: float | None = None
    prepare_seconds: float | None = None
    close_seconds: float | None = None
    case_seconds: float | None = None
    startup_seconds: float | None = None
    fraction: float | None = None  # benchmark_seconds / wall_seconds
    wall_measured_from: str | None = None  # process start | conftest import
    other_tests_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class EnvironmentGpu:
    """One GPU of the machine's NVML inventory (diagnostics/inventory.py's keys; others in extra)."""

    index: int | None = None
    name: str | None = None
    memory_total_mib: float | None = None
    compute_capability: str | None = None
    pci_bus_id: str | None = None
    display_active: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class Environment:
    host: str | None = None
    platform: str | None = None
    python: str | None = None
    cpu: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: list[EnvironmentGpu] = field(default_factory=list)
    selected_gpu_names: list[str] = field(default_factory=list)
    tensorflow: str | None = None
    keras: str | None = None
    nccl: str | None = None
    tf_build: str | None = None  # 'CUDA 12.5.1, cuDNN 9' | 'CPU-only build'
    devices: list[str] | None = None  # the largest device count's worker
    cross_device_ops: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class MergedRun:
    """One run of a merge (`python -m reports merge`): where its rows came from."""

    source: str  # the file as given
    workers: int
    created_at: str | None = None
    host: str | None = None
    complete: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept


@dataclass(kw_only=True)
class Results:
    schema: str
    created_at: str | None = None
    complete: bool = True  # False: the sweep was interrupted
    device_kind: str | None = None  # gpu | cpu
    fallback_reason: str | None = None  # why CPU devices were used, when no GPU was
    model: str | None = None
    image_size: int | None = None  # synthetic images of this size (None: the model's default)
    data: str | None = None  # the user's data set, when given
    scaling: str = "weak"  # weak | strong | both
    gpu_counts: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    method: Method = field(default_factory=Method)
    variants: Variants | None = field(default=None, metadata=OMIT_WHEN_EMPTY)
    environment: Environment = field(default_factory=Environment)
    harness: Harness = field(default_factory=Harness)
    train: list[TrainRow] = field(default_factory=list)
    input: list[InputRow] = field(default_factory=list)
    allreduce: list[AllreduceRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # a merge of runs on different cluster sizes (reports/merge.py): the runs, smallest first
    runs: list[MergedRun] = field(default_factory=list, metadata=OMIT_WHEN_EMPTY)
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named here, kept

    @property
    def unit(self) -> str:
        return "GPU" if self.device_kind == "gpu" else "CPU device"

    @property
    def workers(self) -> int | None:
        """The cluster every row ran on (a sweep across workers), or None: one process, or a merge
        of several cluster sizes (reports/merge.py)."""
        found = {row.workers or 1 for row in [*self.train, *self.input, *self.allreduce]}
        return found.pop() if len(found) == 1 and max(found) > 1 else None

    def to_json(self) -> dict[str, Any]:
        return fields_to_json(self)


def required_fields(cls: type) -> tuple[str, ...]:
    """The fields of a row class a file must have: those without a default."""
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


ROW_TYPES: dict[str, type[Row]] = {"train": TrainRow, "input": InputRow, "allreduce": AllreduceRow}


def unwrap(data: Any) -> Any:
    """The raw results in `data`: a scaling.json carries the results it was made from."""
    if (
        isinstance(data, dict)
        and data.get("schema") == REPORT_SCHEMA
        and isinstance(data.get("results"), dict)
    ):
        return data["results"]
    return data


def validate(data: Any, source: str = "<results>") -> Results:
    """The typed results; raises ResultsError naming the first problem with the shape they need."""
    if not isinstance(data, dict):
        raise ResultsError(f"{source}: top level must be an object")
    data = unwrap(data)
    if data.get("schema") != SCHEMA:
        raise ResultsError(f"{source}: field 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
    for section, row_type in ROW_TYPES.items():
        rows = data.get(section, [])
        if not isinstance(rows, list):
            raise ResultsError(f"{source}: field '{section}' must be a list")
        for i, row in enumerate(rows):
            _check_row(row, row_type, f"{source}: {section}[{i}]")
    if not isinstance(data.get("failures", []), list):
        raise ResultsError(f"{source}: field 'failures' must be a list")
    return from_json(Results, data)


def _check_row(row: Any, row_type: type[Row], where: str) -> None:
    if not isinstance(row, dict):
        raise ResultsError(f"{where} must be an object")
    # the times last: a row missing what it measured is named by that first
    for key in sorted(required_fields(row_type), key=lambda name: name == "round_seconds"):
        if key not in row:
            raise ResultsError(f"{where} has no field '{key}'")
    times = row["round_seconds"]
    if (
        not isinstance(times, list)
        or not times
        or not all(isinstance(t, int | float) and t > 0 for t in times)
    ):
        raise ResultsError(f"{where}.round_seconds must be positive numbers")
    if row_type is TrainRow and row.get("synthetic") is not None:
        _check_row(row["synthetic"], TrainRow, f"{where}.synthetic")


def read(path: str | Path) -> Any:
    """The parsed JSON of a results file; a file cut short (an interrupted copy) says so."""
    try:
        return read_json(path, ResultsError, "a results file")
    except ResultsError as exc:
        if "not JSON" in str(exc) and _ends_early(Path(path)):
            raise ResultsError(
                f"{path}: truncated: the JSON ends before it is complete (an interrupted write or copy?)"
            ) from None
        raise


def _ends_early(path: Path) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return bool(text.strip()) and exc.pos >= len(text.rstrip())
    return False


def load(path: str | Path) -> Results:
    return validate(read(path), str(path))


def failure_summary(
    benchmark: str,
    gpus: int,
    error: str,
    batch_per_gpu: int | None = None,
    nbytes: int | None = None,
    unit: str = "GPU",
    workers: int | None = None,
) -> str:
    """'OOM at 256 per GPU on 2 GPUs', 'crash at 1 MiB all-reduce on 2 workers x 4 GPUs', ..."""
    what = {
        "oom": "OOM",
        "crash": "worker crashed",
        "timeout": "worker hung (killed)",
        "start": "worker failed to start",
        "error": "error",
        "lost": "a worker was lost",
    }.get(error, error)
    plural = "s" if gpus != 1 else ""
    if benchmark == "allreduce" and nbytes is not None:
        at = f"{format_bytes(nbytes)} all-reduce"
    elif batch_per_gpu is not None:
        at = f"{batch_per_gpu} per {unit}" + ("" if benchmark == "train" else f" ({benchmark} pipeline)")
    else:
        at = benchmark
    cluster = f"{workers} workers x " if workers else ""
    return f"{what} at {at} on {cluster}{gpus} {unit}{plural}"


def format_bytes(nbytes: float) -> str:
    """Binary units as nccl-tests prints sizes: 1 KiB = 1024 bytes."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(nbytes)} B"

"""The sweep's benchmark cases: which (device count, batch per device) configurations the weak and
strong series need, every variant of each (XLA x mixed precision x cross-device ops x steps per
call), the variants these devices cannot run, every case in the order the workers run them, the
work each case asks of its worker, and all-reduces per round.

Training runs for every variant; the all-reduce for every cross-device ops (the only axis it
depends on); the input pipeline, which depends on none, once per device count. With --data, each
training case of the baseline variant has a companion right after it: the same training on
synthetic images of the data's size, whose row is kept inside the real one's (what the input
costs: reports/analysis.py, `input_costs`).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sweep_options import SweepOptions

from reports.results import TrainRow, format_bytes
from reports.variants import AXES, AXES_OF, is_default, label
from training.children.protocol import ALLREDUCE_UNROLL, AllreduceWork, InputWork, TrainWork, Work
from training.inputs import tfrecord
from training.inputs.data import IMAGE_SIZE

BENCHMARKS = ("train", "input", "allreduce")
# Large messages run fewer chained all-reduces per round: at most this many bytes per round.
ALLREDUCE_BYTES_PER_ROUND = 2**30


@dataclass(frozen=True)
class Case:
    benchmark: str  # train | input | allreduce
    gpus: int
    batch_per_gpu: int | None = None
    nbytes: int | None = None
    jit_compile: bool = False
    mixed_precision: bool = False
    cross_device_ops: str = "auto"  # also the worker the case runs in: one per (count, ops)
    steps_per_execution: int | str = "auto"
    # with --data, the companion of a baseline training case: synthetic images of this size
    synthetic_size: int | None = None

    @property
    def variant(self) -> dict[str, Any]:
        """The values of the axes this benchmark depends on (what its results row carries)."""
        return {axis: getattr(self, axis) for axis in AXES_OF[self.benchmark]}

    @property
    def id(self) -> str:
        what = f"b{self.batch_per_gpu}" if self.nbytes is None else format_bytes(self.nbytes).replace(" ", "")
        v = {**AXES, **self.variant}
        tags = [
            tag
            for tag, on in (
                ("xla", v["jit_compile"]),
                ("mixed", v["mixed_precision"]),
                (str(v["cross_device_ops"]), v["cross_device_ops"] != AXES["cross_device_ops"]),
                (f"k{v['steps_per_execution']}", v["steps_per_execution"] != AXES["steps_per_execution"]),
                ("synthetic", self.synthetic_size is not None),
            )
            if on
        ]
        return "-".join([f"{self.gpus}dev", what, *tags])


def training_configs(options: SweepOptions) -> list[tuple[int, int]]:
    """(devices, batch per device) for the weak and/or strong series, each configuration once.

    Strong scaling keeps the global batch = batch x the smallest count; counts it does not divide
    evenly are left out (and the report's strong series skips them).
    """
    base = min(options.gpu_counts)
    configs: set[tuple[int, int]] = set()
    for batch in options.batch_sizes:
        for n in options.gpu_counts:
            if options.scaling in ("weak", "both"):
                configs.add((n, batch))
            total = batch * base
            if options.scaling in ("strong", "both") and total % n == 0:
                configs.add((n, total // n))
    return sorted(configs)


def cross_device_ops_not_applicable(options: SweepOptions, gpus: int, ops: str) -> str | None:
    """Why `ops` cannot be measured on `gpus` of these devices, or None where it can."""
    if ops == "nccl" and options.device_kind != "gpu":
        return "NCCL all-reduce needs GPUs: these are CPU logical devices"
    if gpus == 1 and ops != options.cross_device_ops[0]:
        return "one device has nothing to all-reduce: only the first cross-device ops runs"
    return None


def not_applicable(options: SweepOptions) -> list[dict[str, Any]]:
    """The variants recorded as not applicable instead of run, per device count, with the reason."""
    out = []
    for n in options.gpu_counts:
        for ops in options.cross_device_ops:
            reason = cross_device_ops_not_applicable(options, n, ops)
            if reason:
                out.append({"gpus": n, "variant": {"cross_device_ops": ops}, "reason": reason})
    if True in options.jit_compile:
        for n, reason in options.xla_not_applicable:
            out.append({"gpus": n, "variant": {"jit_compile": True}, "reason": reason})
    return out


def plan_cases(options: SweepOptions) -> list[Case]:
    """Every benchmark and variant, grouped by (device count, cross-device ops) so that each
    worker starts once; with --data, each baseline training case followed by its companion."""
    configs = training_configs(options)
    companion = companion_size(options)
    cases: list[Case] = []
    for n in options.gpu_counts:
        batches = [b for m, b in configs if m == n]
        runnable = [o for o in options.cross_device_ops if not cross_device_ops_not_applicable(options, n, o)]
        no_xla = n in dict(options.xla_not_applicable)
        for i, ops in enumerate(runnable):
            for batch in batches:
                cases += [
                    Case(
                        "train",
                        n,
                        batch,
                        jit_compile=jit,
                        mixed_precision=mixed,
                        cross_device_ops=ops,
                        steps_per_execution=k,
                    )
                    for jit, mixed, k in itertools.product(
                        options.jit_compile, options.mixed_precision, options.steps_per_execution
                    )
                    if not (jit and no_xla)
                ]
                base = Case("train", n, batch, **baseline_variant(options))
                if companion is not None and base in cases:  # right after it: same worker, same state
                    cases.insert(cases.index(base) + 1, dataclasses.replace(base, synthetic_size=companion))
            if i == 0:  # the pipeline depends on no variant: measured once, in the first worker
                cases += [Case("input", n, b, cross_device_ops=ops) for b in batches]
            if n * options.placement.workers > 1:  # one replica has nothing to all-reduce with
                cases += [
                    Case("allreduce", n, nbytes=s, cross_device_ops=ops) for s in options.allreduce_bytes
                ]
    return cases


def baseline_variant(options: SweepOptions) -> dict[str, Any]:
    """The variant every other is measured against: each axis' first value (as results record it)."""
    return {
        "jit_compile": options.jit_compile[0],
        "mixed_precision": options.mixed_precision[0],
        "cross_device_ops": options.cross_device_ops[0],
        "steps_per_execution": options.steps_per_execution[0],
    }


def companion_size(options: SweepOptions) -> int | None:
    """The size of the synthetic images --data's companion cases train on: the size the worker
    decodes image folders and TFRecords to, or an .npz file's own (read from its header). None
    without --data, or where its examples are not square RGB images (the only shape of synthetic
    data the worker makes: no companion then)."""
    if options.data is None:
        return None
    path = Path(options.data)
    if path.is_dir() or tfrecord.looks_like_tfrecords(str(path)):
        return IMAGE_SIZE[0]
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x.npy") as x:
            fmt = np.lib.format
            header = fmt.read_array_header_1_0 if fmt.read_magic(x) == (1, 0) else fmt.read_array_header_2_0
            shape = header(x)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # the worker's own loading says what is wrong with it, on the real case
    square_rgb = len(shape) == 4 and shape[1] == shape[2] and shape[3] == 3
    return int(shape[1]) if square_rgb else None


def attach_companion(rows: list[TrainRow], companion: TrainRow) -> bool:
    """Keep a companion's row inside the latest real-data row of its case (its `synthetic`), where
    no figure but the input's cost reads it; False where that row is not there (it failed)."""
    for row in reversed(rows):
        same = (row.gpus, row.batch_per_gpu, row.workers, row.variant)
        if same == (companion.gpus, companion.batch_per_gpu, companion.workers, companion.variant):
            row.synthetic = companion
            return True
    return False


def allreduce_iters(options: SweepOptions, nbytes: int) -> int:
    """All-reduces per round: --allreduce-iters, fewer for large messages (a whole number of the
    worker's traced calls of ALLREDUCE_UNROLL where there is more than one call)."""
    iters = max(1, min(options.allreduce_iters, ALLREDUCE_BYTES_PER_ROUND // nbytes))
    return iters - iters % ALLREDUCE_UNROLL if iters > ALLREDUCE_UNROLL else iters


def data_request(options: SweepOptions) -> dict[str, Any]:
    """What the worker trains and feeds on: the user's data, or synthetic images of a size (the
    fields of TrainWork and InputWork that say so)."""
    if options.data is not None:
        return {"data": str(options.data)}
    return {"image_size": options.image_size} if options.image_size is not None else {}


def work_of(case: Case, options: SweepOptions) -> Work:
    """What the worker runs for one case."""
    if case.benchmark == "allreduce":
        assert case.nbytes is not None
        return AllreduceWork(bytes=case.nbytes)
    assert case.batch_per_gpu is not None
    if case.benchmark == "input":
        return InputWork(batch_per_replica=case.batch_per_gpu, **data_request(options))
    return TrainWork(
        model=options.model,
        batch_per_replica=case.batch_per_gpu,
        jit_compile=case.jit_compile,
        mixed_precision=case.mixed_precision,
        steps_per_execution=case.steps_per_execution,
        **(data_request(options) if case.synthetic_size is None else {"image_size": case.synthetic_size}),
    )


def progress_line(
    case: Case, row: dict[str, Any] | None, failure: str | None, unit: str, workers: int | None = None
) -> str:
    """What a case measured, in one line: 'train 2 CPU devices x 32: 1,234 samples/s' (median round),
    'all-reduce 2 workers x 4 GPUs 1 MiB: 3.1 GB/s algbw', or the failure ('OOM at 256 per GPU on 2
    GPUs: ...')."""
    devices = (
        (f"{workers} workers x " if workers else "") + f"{case.gpus} {unit}" + ("s" if case.gpus > 1 else "")
    )
    if case.benchmark == "allreduce":
        assert case.nbytes is not None
        what = f"all-reduce {devices} {format_bytes(case.nbytes)}"
    else:
        what = f"{case.benchmark} {devices} x {case.batch_per_gpu}"
    if case.benchmark != "input" and not is_default(case.variant):
        what += f" ({label(case.variant)})"
    if case.synthetic_size is not None:
        what += f" (synthetic {case.synthetic_size}x{case.synthetic_size} images, not --data)"
    if failure is not None:  # its summary names the case and its variant
        return failure
    if row is None:
        return f"{what}: ran once, not measured (--benchmark-disable)"
    seconds = statistics.median(row["round_seconds"])
    if case.benchmark == "allreduce":
        return f"{what}: {row['bytes'] * row['iters'] / seconds / 1e9:.3g} GB/s algbw"
    return f"{what}: {row['global_batch'] * row['steps'] / seconds:,.0f} samples/s"

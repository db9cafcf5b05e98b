"""Scaling across runs (`python -m reports merge RUN1.json RUN2.json ... -o DIR`): one report from
sweeps taken on different cluster sizes (1 node, 2 nodes, 4 nodes: separate jobs, as schedulers
give them), throughput and efficiency against the smallest, per model and batch.

Runs merge only when they measured the same thing the same way: a difference in model, data, batch
sizes, variants or software is refused with one line naming it (MergeError, a UserError: exit 2).
The merge is a results file of the usual schema whose rows carry their run's worker count and whose
`runs` name the sources, so `python -m reports compare` reads it as any other, and
`python -m reports DIR/results.json` re-renders the merged report.

Pure functions on reports/results.py's typed rows; the CLI is reports/__main__.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reports import stats
from reports.results import Harness, MergedRun, Results, ResultsError, TrainRow, unwrap, validate
from reports.variants import baseline, is_baseline

# what two runs must share, and how a difference is named: (what, value of a run)
SAME_MEASUREMENT: tuple[tuple[str, Any], ...] = (
    ("model", lambda r: r.model),
    ("devices", lambda r: r.device_kind),
    ("image size", lambda r: r.image_size),
    ("data", lambda r: r.data),
    ("scaling mode", lambda r: r.scaling),
    ("batch sizes", lambda r: sorted(r.batch_sizes)),
    ("variants", lambda r: r.variants.axes if r.variants else None),
    ("steps per round", lambda r: r.method.steps_per_round),
    ("TensorFlow", lambda r: r.environment.tensorflow),
    ("Keras", lambda r: r.environment.keras),
    ("NCCL", lambda r: r.environment.nccl),
    ("TensorFlow build", lambda r: r.environment.tf_build),
    ("NVIDIA driver", lambda r: r.environment.driver_version),
)


class MergeError(ResultsError):
    """Results that do not belong in one report (bad input: one line, exit 2)."""


@dataclass(frozen=True)
class Point:
    """One (batch per device, devices per worker) configuration on one cluster size."""

    batch_per_gpu: int
    gpus: int  # devices per worker
    workers: int
    samples_per_sec: stats.Summary
    speedup: float  # against the fewest workers that ran the same configuration
    efficiency: float  # T(W) / ((W / W0) x T(W0))

    @property
    def devices(self) -> int:
        return self.gpus * self.workers


def workers_of(results: Results) -> int:
    """The run's worker count: what its rows record (a single-process sweep: 1)."""
    counts = {row.workers or 1 for row in [*results.train, *results.input, *results.allreduce]}
    counts |= {f.workers or 1 for f in results.failures}
    return max(counts, default=1)


def check_mergeable(runs: Sequence[tuple[str, Results]]) -> None:
    """Raises MergeError for the first thing that keeps these runs out of one report."""
    if len(runs) < 2:
        raise MergeError("merge needs at least two results files (one per cluster size)")
    for name, results in runs:
        if results.runs:
            raise MergeError(
                f"{name} is already a merge of {len(results.runs)} runs: merge the runs' own files"
            )
    first_name, first = runs[0]
    for name, results in runs[1:]:
        for what, value in SAME_MEASUREMENT:
            if value(results) != value(first):
                raise MergeError(
                    f"{name} differs from {first_name} in {what} ({_shown(value(results))} vs "
                    f"{_shown(value(first))}): only runs of the same measurement merge"
                )
    seen: dict[int, str] = {}
    for name, results in runs:
        workers = workers_of(results)
        if workers in seen:
            raise MergeError(
                f"{seen[workers]} and {name} are both {workers}-worker runs: "
                "merge takes one run per cluster size"
            )
        seen[workers] = name


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {' '.join(map(str, v))}" for k, v in value.items())
    return str(value)


def _with_workers(row: Any, workers: int) -> Any:
    """The row tagged with its run's workers; a one-worker run's rows stay as a single sweep wrote
    them, so that they match that sweep's cases in `compare`."""
    return dataclasses.replace(row, workers=workers if workers > 1 else row.workers)


def merge(named: Sequence[tuple[str, Any]]) -> Results:
    """The runs (file name, parsed JSON) as one results file, smallest cluster first."""
    runs = [(name, validate(unwrap(data), name)) for name, data in named]
    check_mergeable(runs)
    runs.sort(key=lambda run: workers_of(run[1]))
    smallest = runs[0][1]
    merged = dataclasses.replace(
        smallest,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        complete=all(r.complete for _, r in runs),
        gpu_counts=sorted({n for _, r in runs for n in r.gpu_counts}),
        harness=Harness(),  # a merge runs no sweep; each run's own is in its file
        train=[],
        input=[],
        allreduce=[],
        failures=[],
        runs=[],
    )
    for name, results in runs:
        workers = workers_of(results)
        merged.train += [_with_workers(row, workers) for row in results.train]
        merged.input += [_with_workers(row, workers) for row in results.input]
        merged.allreduce += [_with_workers(row, workers) for row in results.allreduce]
        merged.failures += [_with_workers(f, workers) for f in results.failures]
        merged.runs.append(
            MergedRun(
                source=name,
                workers=workers,
                created_at=results.created_at,
                host=results.environment.host,
                complete=results.complete,
            )
        )
    if not _shared(merged):
        raise MergeError(
            "no training configuration (batch per device, devices per worker) was measured on two "
            f"cluster sizes: {', '.join(name for name, _ in runs)}"
        )
    return merged


def _shared(results: Results) -> bool:
    """Whether some configuration ran on two cluster sizes: what a scaling figure needs."""
    by_config: dict[tuple[int, int], set[int]] = {}
    for row in _baseline_rows(results):
        by_config.setdefault((row.batch_per_gpu, row.gpus), set()).add(row.workers or 1)
    return any(len(workers) > 1 for workers in by_config.values())


def _baseline_rows(results: Results) -> list[TrainRow]:
    base = baseline(results)
    return [row for row in results.train if is_baseline(row.variant, "train", base)]


def points(results: Results) -> list[Point]:
    """Every baseline training configuration per cluster size, with its speedup and efficiency
    against the fewest workers that ran it (weak scaling: the batch per device is fixed, so W
    workers at ideal scaling give W / W0 times the rate)."""
    rows = sorted(_baseline_rows(results), key=lambda r: (r.batch_per_gpu, r.gpus, r.workers or 1))
    first: dict[tuple[int, int], tuple[int, float]] = {}
    out = []
    for row in rows:
        workers = row.workers or 1
        summary = stats.summarize(row.rates())
        base_workers, base_rate = first.setdefault((row.batch_per_gpu, row.gpus), (workers, summary.median))
        out.append(
            Point(
                batch_per_gpu=row.batch_per_gpu,
                gpus=row.gpus,
                workers=workers,
                samples_per_sec=summary,
                speedup=summary.median / base_rate,
                efficiency=stats.scaling_efficiency(summary.median, workers, base_rate, base_workers),
            )
        )
    return out


@dataclass(frozen=True)
class BandwidthPoint:
    """The all-reduce of one message size on one cluster size: every device of every worker a rank."""

    gpus: int  # devices per worker
    workers: int
    bytes: int
    busbw_gbps: float  # nccl-tests' bus bandwidth, median round

    @property
    def ranks(self) -> int:
        return self.gpus * self.workers


def bandwidth_points(results: Results) -> list[BandwidthPoint]:
    """The baseline all-reduce of the largest message every cluster size measured, per size."""
    base = baseline(results)
    rows = [r for r in results.allreduce if is_baseline(r.variant, "allreduce", base)]
    sizes_by_run: dict[int, set[int]] = {}
    for r in rows:
        sizes_by_run.setdefault(r.workers or 1, set()).add(r.bytes)
    common = set.intersection(*sizes_by_run.values()) if sizes_by_run else set()
    if not common:
        return []
    largest = max(common)
    out = []
    for r in sorted(rows, key=lambda r: (r.workers or 1, r.gpus)):
        if r.bytes != largest:
            continue
        ranks = r.gpus * (r.workers or 1)
        algbw = stats.algbw(r.bytes * r.iters, stats.summarize(r.round_seconds).median)
        out.append(BandwidthPoint(r.gpus, r.workers or 1, r.bytes, stats.busbw(algbw, ranks) / 1e9))
    return out

"""A sweep's results as results.json holds them (reports/results.py's typed schema): the rows the
sweep recorded, with how they were measured (`method`), the variant axes and what could not run
(`variants`), the machine (`environment_of`) and where the wall time went (`harness`).

No TensorFlow here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sweep_cases import ALLREDUCE_BYTES_PER_ROUND, not_applicable
from sweep_env import environment, process_started_at

from reports.codec import from_json, to_json
from reports.results import SCHEMA, Environment, Harness, Method, NotApplicable, Results, Variants
from training.children.protocol import ALLREDUCE_UNROLL

if TYPE_CHECKING:
    from sweep import Sweep


def environment_of(sweep: Sweep) -> Environment:
    """The machine's, with the versions and devices of the largest count's worker (the baseline
    cross-device ops' where it started)."""
    env = from_json(Environment, environment(sweep.plan))
    if sweep.ready:
        baseline_ops = sweep.options.cross_device_ops[0]
        latest = sweep.ready[max(sweep.ready, key=lambda k: (k[0], k[1] == baseline_ops))]
        env.tensorflow = latest.tensorflow or env.tensorflow
        env.keras = latest.keras or env.keras
        env.devices = latest.devices
        env.cross_device_ops = latest.cross_device_ops
    return env


def method(sweep: Sweep) -> Method:
    o = sweep.options
    return Method(
        steps_per_round=o.steps,
        rounds=o.rounds,
        warmup_steps=o.warmup_steps,
        warmup_rounds=1 if o.warmup_steps else 0,
        allreduce_iters=o.allreduce_iters,
        allreduce_bytes_per_round=ALLREDUCE_BYTES_PER_ROUND,
        allreduce_unroll=ALLREDUCE_UNROLL,
        statistic="median over rounds",
        timer="time.perf_counter() inside the worker, around each round, ending on a host sync",
        seed=42,
    )


def variants(sweep: Sweep) -> Variants:
    o = sweep.options
    axes: dict[str, list[Any]] = {
        "jit_compile": list(o.jit_compile),
        "mixed_precision": list(o.mixed_precision),
        "cross_device_ops": list(o.cross_device_ops),
        "steps_per_execution": list(o.steps_per_execution),
    }
    # what every other variant's speedup is measured against: each axis' first value
    return Variants(
        axes=axes,
        baseline={axis: values[0] for axis, values in axes.items()},
        not_applicable=[from_json(NotApplicable, na) for na in not_applicable(o)],
    )


def results(sweep: Sweep, complete: bool = True, other_tests_seconds: float = 0.0) -> dict[str, Any]:
    """The raw results as results.json has them, the harness figure taken now (call it last,
    just before the report)."""
    o = sweep.options
    results = Results(
        schema=SCHEMA,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        complete=complete and sweep.ended is None,
        device_kind=sweep.plan.kind,
        fallback_reason=sweep.plan.fallback_reason,
        model=o.model,
        image_size=o.image_size,
        data=str(o.data) if o.data is not None else None,
        scaling=o.scaling,
        gpu_counts=list(o.gpu_counts),
        batch_sizes=list(o.batch_sizes),
        method=method(sweep),
        variants=variants(sweep),
        environment=environment_of(sweep),
        harness=from_json(Harness, harness(sweep, other_tests_seconds)),
        train=sweep.train,
        input=sweep.input,
        allreduce=sweep.allreduce,
        failures=sweep.failures,
    )
    return results.to_json()


def harness(sweep: Sweep, other_tests_seconds: float = 0.0) -> dict[str, Any]:
    """Where the wall time went. Time in other benchmark modules of the same pytest run
    (`other_tests_seconds`) is not the sweep's and is left out of its wall time."""
    wall = time.time() - sweep.started_at - other_tests_seconds
    harness = Harness(
        wall_seconds=wall,
        benchmark_seconds=sweep.benchmark_seconds,
        worker_start_seconds=sweep.worker_start_seconds,
        prepare_seconds=sweep.prepare_seconds,
        close_seconds=sweep.close_seconds,
        case_seconds=sweep.case_seconds,
        startup_seconds=(sweep.first_case_at - sweep.started_at) if sweep.first_case_at else None,
        fraction=sweep.benchmark_seconds / wall if wall > 0 else None,
        wall_measured_from="process start" if process_started_at() else "conftest import",
        other_tests_seconds=other_tests_seconds,
    )
    return to_json(harness)

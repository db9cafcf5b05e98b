"""The sweep itself: one long-lived worker per (device count, cross-device ops)
(training/children/worker.py, started on the resolved devices), each case timed by pytest-benchmark,
failures recorded, and the raw results as reports/results.py's typed rows, with the harness's own
timing and the variants measured.

No TensorFlow here: the workers import it, one process per device count.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep_cases import (
    Case,
    allreduce_iters,
    attach_companion,
    work_of,
)
from sweep_cases import data_request as data_request  # what a case trains on: part of sweep's interface
from sweep_env import process_started_at
from sweep_options import SweepOptions
from sweep_plan import launches

from diagnostics.inventory import Inventory
from diagnostics.monitor import BackgroundSampler, Sample, readings, utilization_by_gpu
from reports.codec import to_json
from reports.results import (
    AllreduceRow,
    Clocks,
    Failure,
    GpuClocks,
    InputRow,
    TrainRow,
    failure_summary,
)
from reports.variants import AXES, is_default, label
from training.children.protocol import (
    Prepared,
    Ran,
    Ready,
    Work,
)
from training.children.worker_client import WorkerError
from training.children.worker_group import WorkerGroup
from training.devices.setup import DevicePlan

UTILIZATION_INTERVAL_S = 0.5


class CaseFailed(Exception):
    """A case that failed and was recorded; `expected` (out of memory) is a skip, not a failure;
    `ends_sweep`: across workers, where no worker can go on without the others."""

    def __init__(self, summary: str, expected: bool, ends_sweep: bool = False) -> None:
        super().__init__(summary)
        self.expected, self.ends_sweep = expected, ends_sweep


def read_utilization() -> Inventory:
    from diagnostics.nvml import read_inventory

    return read_inventory(include_links=False, include_processes=False)


def utilization(sampler: BackgroundSampler) -> dict[str, list[float]] | None:
    """The samples as results.json keeps them: per NVML index (as text), None if there are none."""
    per_gpu = {str(gpu): values for gpu, values in utilization_by_gpu(sampler.samples, sampler.gpus).items()}
    return per_gpu if any(per_gpu.values()) else None


def gpu_clocks(samples: list[Sample], gpus: list[int]) -> Clocks | None:
    """Each watched GPU's SM clock, clock event reasons (all seen), heat and power over the measured
    rounds, as results.json keeps them; None without samples (CPU devices, no NVML)."""
    found = [
        GpuClocks(
            gpu=r.gpu,
            samples=r.samples,
            clocks_event_reasons=None if r.clocks_event_reasons is None else list(r.clocks_event_reasons),
            throttled_samples=r.throttled_samples,
            sm_clock_mhz_median=r.sm_clock_mhz_median,
            sm_clock_mhz_min=r.sm_clock_mhz_min,
            sm_clock_max_mhz=r.sm_clock_max_mhz,
            temperature_c_max=r.temperature_c_max,
            power_w_mean=r.power_w_mean,
        )
        for r in readings(samples, gpus).values()
    ]
    return Clocks(gpus=found) if found else None


@dataclass
class Rounds:
    """One case's timed rounds, as the worker answered them."""

    warm: list[float] = field(default_factory=list)
    measured: list[float] = field(default_factory=list)
    last: Ran | None = None


@dataclass
class Sweep:
    options: SweepOptions
    plan: DevicePlan
    started_at: float = field(default_factory=lambda: process_started_at() or time.time())
    train: list[TrainRow] = field(default_factory=list)
    input: list[InputRow] = field(default_factory=list)
    allreduce: list[AllreduceRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    benchmark_seconds: float = 0.0
    worker_start_seconds: float = 0.0
    prepare_seconds: float = 0.0
    close_seconds: float = 0.0
    case_seconds: float = 0.0  # inside Sweep.run, from asking for a worker to the last answer
    first_case_at: float | None = None
    ready: dict[tuple[int, str], Ready] = field(default_factory=dict)  # by (count, ops)
    ended: str | None = None  # across workers: the failure that ended the sweep (one line)
    _client: WorkerGroup | None = None
    _client_key: tuple[int, str] | None = None
    _start_failures: dict[tuple[int, str], WorkerError] = field(default_factory=dict)
    _logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpudiag-sweep-")))
    _starts: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def unit(self) -> str:
        return "GPU" if self.plan.kind == "gpu" else "CPU device"

    @property
    def workers(self) -> int | None:
        """What the rows record as their workers: None on one machine."""
        placement = self.options.placement
        return placement.workers if placement.several else None

    def worker(self, gpus: int, ops: str = "auto") -> WorkerGroup:
        """The live worker for this count and cross-device ops (a strategy property, fixed per
        process), or the cluster's workers; starts them (closing others) when needed."""
        key = (gpus, ops)
        if self._client is not None and self._client_key == key and self._client.proc is not None:
            return self._client
        self.close_worker()
        if key in self._start_failures:
            raise self._start_failures[key]
        client = WorkerGroup(
            # the resolved devices: the workers select nothing
            launches(self.plan, self.options.placement, gpus, ops, self.options.collective_timeout),
            self._logs,
            f"worker-{gpus}-{ops}-{next(self._starts)}",
            start_timeout=self.options.worker_start_timeout,
        )
        try:
            self.ready[key] = client.start()
        except WorkerError as exc:
            self.worker_start_seconds += client.start_seconds
            # a count whose worker cannot start will not start for the next case either
            what = f"{gpus} {self.unit}(s)" + (
                "" if ops == AXES["cross_device_ops"] else f", {ops} all-reduce"
            )
            failure = WorkerError("start", f"worker for {what} did not start: {exc}")
            self._start_failures[key] = failure
            raise failure from None
        self.worker_start_seconds += client.start_seconds
        self._client, self._client_key = client, key
        return client

    def close_worker(self) -> None:
        started = time.perf_counter()
        if self._client is not None:
            self._client.close()
        self._client, self._client_key = None, None
        self.close_seconds += time.perf_counter() - started

    def _record_failure(self, case: Case, exc: WorkerError) -> CaseFailed:
        # after OOM, a crash or a hang the worker is of no further use: TF keeps GPU memory; a
        # cluster's workers cannot go on after any failure (their collectives wait for the failed one)
        if exc.kind in ("oom", "crash", "timeout") or self.workers:
            self.close_worker()
        summary = failure_summary(
            case.benchmark, case.gpus, exc.kind, case.batch_per_gpu, case.nbytes, self.unit, self.workers
        )
        if not is_default(case.variant):
            summary += f" ({label(case.variant)})"
        if case.synthetic_size is not None:
            summary += " (synthetic companion)"
        self.failures.append(
            Failure(
                benchmark=case.benchmark,
                gpus=case.gpus,
                batch_per_gpu=case.batch_per_gpu,
                bytes=case.nbytes,
                variant=case.variant,
                error=exc.kind,
                message=str(exc),
                summary=summary,
                workers=self.workers,
            )
        )
        if self.workers:
            done = len(self.train) + len(self.input) + len(self.allreduce)
            self.ended = (
                f"{summary}: {exc}; the sweep across workers ends here (every worker waits on the "
                f"failed one), {done} case(s) measured before it are kept in the results"
            )
            return CaseFailed(self.ended, expected=False, ends_sweep=True)
        return CaseFailed(f"{summary}: {exc}", expected=exc.kind == "oom")

    def run(self, benchmark: Any, case: Case) -> dict[str, Any] | None:
        """Run one case under pytest-benchmark; record its row (returned as results.json has it) or
        its failure (raises CaseFailed)."""
        started = time.perf_counter()
        if self.first_case_at is None:
            self.first_case_at = time.time()
        try:
            return self._run(benchmark, case)
        finally:
            self.case_seconds += time.perf_counter() - started

    def _steps(self, case: Case) -> tuple[int, int]:
        """(warm-up, measured) steps of one round of the case."""
        if case.benchmark == "allreduce":
            assert case.nbytes is not None
            iters = allreduce_iters(self.options, case.nbytes)
            return iters, iters
        return self.options.warmup_steps, self.options.steps

    def _run(self, benchmark: Any, case: Case) -> dict[str, Any] | None:
        o, work = self.options, work_of(case, self.options)
        warm_steps, steps = self._steps(case)
        try:
            client = self.worker(case.gpus, case.cross_device_ops)
            prepared = client.prepare(work, o.worker_timeout, steps)
            self.prepare_seconds += prepared.seconds
            ready = self.ready[(case.gpus, case.cross_device_ops)]
            watched = ready.gpu_indices if case.benchmark == "train" else []
            sampler = BackgroundSampler(read_utilization, watched, UTILIZATION_INTERVAL_S)
            with sampler:
                rounds = self._rounds(benchmark, client, work, sampler, warm_steps, steps)
        except WorkerError as exc:
            raise self._record_failure(case, exc) from None
        if not rounds.measured or rounds.last is None:  # --benchmark-disable: ran once, measured nothing
            return None
        clocks = gpu_clocks(sampler.samples, sampler.gpus)
        row = self._row(case, ready, prepared, rounds, warm_steps, steps, utilization(sampler), clocks)
        return to_json(row)

    def _rounds(
        self,
        benchmark: Any,
        client: WorkerGroup,
        work: Work,
        sampler: BackgroundSampler,
        warm_steps: int,
        steps: int,
    ) -> Rounds:
        """pytest-benchmark's rounds, each one request to the worker (the first a warm-up)."""
        warmup_rounds = 1 if warm_steps > 0 else 0
        calls = itertools.count()
        rounds = Rounds()

        def setup() -> tuple[tuple[int, bool], dict[str, Any]]:
            is_warm = next(calls) < warmup_rounds
            return (warm_steps if is_warm else steps, is_warm), {}

        def target(k: int, is_warm: bool) -> None:
            sampler.active = not is_warm
            answer = client.run(work, k, self.options.worker_timeout)
            self.benchmark_seconds += answer.seconds
            (rounds.warm if is_warm else rounds.measured).append(answer.seconds)
            rounds.last = answer

        benchmark.pedantic(target, setup=setup, rounds=self.options.rounds, warmup_rounds=warmup_rounds)
        return rounds

    def _row(
        self,
        case: Case,
        ready: Ready,
        prepared: Prepared,
        rounds: Rounds,
        warm_steps: int,
        steps: int,
        utilization: dict[str, list[float]] | None,
        clocks: Clocks | None = None,
    ) -> TrainRow | InputRow | AllreduceRow:
        """The results row of a measured case, recorded in its section."""
        assert rounds.last is not None
        if case.benchmark == "allreduce":
            assert case.nbytes is not None
            allreduce = AllreduceRow(
                gpus=case.gpus,
                workers=self.workers,
                round_seconds=rounds.measured,
                warmup_seconds=rounds.warm,
                prepare_seconds=prepared.seconds,
                devices=ready.devices,
                gpu_names=ready.gpu_names,
                variant=case.variant,
                bytes=case.nbytes,
                iters=rounds.last.steps,  # whole traced calls of ALLREDUCE_UNROLL: what the worker ran
            )
            self.allreduce.append(allreduce)
            return allreduce
        assert case.batch_per_gpu is not None and prepared.global_batch is not None
        row = InputRow(
            gpus=case.gpus,
            workers=self.workers,
            round_seconds=rounds.measured,
            warmup_seconds=rounds.warm,
            prepare_seconds=prepared.seconds,
            devices=ready.devices,
            gpu_names=ready.gpu_names,
            batch_per_gpu=case.batch_per_gpu,
            global_batch=prepared.global_batch,
            steps=steps,
            warmup_steps=warm_steps,
        )
        if case.benchmark == "input":
            self.input.append(row)
            return row
        train = TrainRow(
            **{**vars(row), "variant": case.variant},
            flops_per_sample=prepared.flops_per_sample,
            gradient_bytes=prepared.gradient_bytes,
            trainable_params=prepared.trainable_params,
            build_seconds=prepared.build_seconds,
            dtype_policy=prepared.dtype_policy,
            input_shape=prepared.input_shape,
            examples=prepared.examples,
            first_step_seconds=prepared.first_step_seconds,
            loss=rounds.last.loss,
            calls_per_round=rounds.last.calls,
            utilization=utilization,
            clocks=clocks,
        )
        if case.synthetic_size is not None:  # --data's companion: kept inside its real-data row
            attach_companion(self.train, train)
        else:
            self.train.append(train)
        return train

    def has_data(self) -> bool:
        return bool(self.train or self.input or self.allreduce or self.failures)

    def results(self, complete: bool = True, other_tests_seconds: float = 0.0) -> dict[str, Any]:
        """The raw results as results.json has them, the harness figure taken now (call it last,
        just before the report): sweep_results.py."""
        from sweep_results import results

        return results(self, complete, other_tests_seconds)

    def harness(self, other_tests_seconds: float = 0.0) -> dict[str, Any]:
        """Where the wall time went (sweep_results.py), time in other benchmark modules left out."""
        from sweep_results import harness

        return harness(self, other_tests_seconds)

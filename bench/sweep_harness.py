"""The GPU-count x batch-size sweep behind `pytest bench --benchmark-only`: option checking, the
list of benchmark cases, one long-lived worker per device count, failure recording, results.

No TensorFlow here: the workers (training/worker.py) import it, one process per device count.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diagnostics.selection import MODES, SelectionError
from reports.results import SCHEMA, failure_summary, format_bytes
from reports.write import ReportDirError, check_report_dir
from training import models
from training.devices import DevicePlan, DeviceSetupError, plan_devices
from training.worker import ALLREDUCE_UNROLL, WorkerClient, WorkerError

DEFAULT_BATCH_SIZES = (32, 64, 128)
DEFAULT_STEPS = 20
DEFAULT_ROUNDS = 10
DEFAULT_WARMUP_STEPS = 10
DEFAULT_REPORT_DIR = "reports/output"
# 1 KiB to 256 MiB in steps of 4 (nccl-tests sweeps in steps of 2; 4 halves the time)
DEFAULT_ALLREDUCE_BYTES = tuple(2**e for e in range(10, 29, 2))
DEFAULT_ALLREDUCE_ITERS = 20
# Large messages run fewer chained all-reduces per round: at most this many bytes per round.
ALLREDUCE_BYTES_PER_ROUND = 2**30
DEFAULT_WORKER_TIMEOUT = 300.0
DEFAULT_WORKER_START_TIMEOUT = 600.0  # a new GPU generation can JIT-compile PTX for minutes
SCALING_MODES = ("weak", "strong", "both")
BENCHMARKS = ("train", "input", "allreduce")
UTILIZATION_INTERVAL_S = 0.5


class SweepUsageError(ValueError):
    """Options that cannot run (one line for pytest's usage error)."""


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
    device_mode: str
    custom_gpus: tuple[int, ...]
    min_gpu_memory: float
    include_display_gpus: bool
    cpu_replicas: int | None
    allreduce_bytes: tuple[int, ...]
    allreduce_iters: int
    worker_timeout: float
    worker_start_timeout: float


# -- options ---------------------------------------------------------------------------------------


def _ints(flag: str, values: Sequence[str] | None, minimum: int = 1) -> tuple[int, ...] | None:
    if values is None:
        return None
    out = []
    for text in values:
        for part in str(text).replace(",", " ").split():
            try:
                value = int(part)
            except ValueError:
                raise SweepUsageError(f"{flag}: {part!r} is not an integer") from None
            if value < minimum:
                raise SweepUsageError(f"{flag}: values must be >= {minimum}, got {value}")
            out.append(value)
    if not out:
        raise SweepUsageError(f"{flag}: give at least one value")
    return tuple(sorted(set(out)))


def _int(flag: str, text: str | None, default: int, minimum: int) -> int:
    if text is None:
        return default
    values = _ints(flag, [text], minimum)
    assert values is not None
    if len(values) != 1:
        raise SweepUsageError(f"{flag}: expected one integer, got {text!r}")
    return values[0]


def _seconds(flag: str, text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SweepUsageError(f"{flag}: {text!r} is not a number of seconds") from None
    if not value > 0:
        raise SweepUsageError(f"{flag}: must be > 0 seconds, got {text}")
    return value


_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1K' = 1024 bytes, '256M', '1G', '4096' (binary units, as nccl-tests' -b/-e)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise SweepUsageError(f"--allreduce-bytes: {text!r} is not a size (e.g. 1K, 64M, 1G)")
    value = int(match.group(1)) * 1024 ** " KMG".index((match.group(2) or " ").upper())
    if value < 4:
        raise SweepUsageError(f"--allreduce-bytes: sizes must be at least 4 bytes (one float32), got {text}")
    return value


def default_counts(selected: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the number selected, and that number itself."""
    counts = [n for n in (2**e for e in range(0, 12)) if n <= selected]
    if selected not in counts:
        counts.append(selected)
    return tuple(counts)


def parse_options(get: Callable[[str], Any]) -> tuple[SweepOptions, DevicePlan]:
    """Check every sweep option and plan the devices; raise SweepUsageError for the first problem.

    `get(name)` returns the raw option value (None when not given). Creates nothing on disk.
    """
    scaling = get("scaling") or "weak"
    if scaling not in SCALING_MODES:
        raise SweepUsageError(f"--scaling: choose one of {', '.join(SCALING_MODES)}, got {scaling!r}")
    model = get("model") or "cnn"
    try:
        models.check_name(model)
    except models.ModelError as exc:
        raise SweepUsageError(str(exc)) from None
    device_mode = get("device_mode") or "multi"
    if device_mode not in MODES:
        raise SweepUsageError(f"--device-mode: choose one of {', '.join(MODES)}, got {device_mode!r}")
    custom = _ints("--custom-gpus", get("custom_gpus"), minimum=0) or ()
    min_memory = 8.0
    if get("min_gpu_memory") is not None:
        try:
            min_memory = float(get("min_gpu_memory"))
        except ValueError:
            raise SweepUsageError(f"--min-gpu-memory: {get('min_gpu_memory')!r} is not a number") from None
    cpu_replicas = None
    if get("cpu_replicas") is not None:
        cpu_replicas = _int("--cpu-replicas", get("cpu_replicas"), 1, minimum=1)
    counts = _ints("--gpus", get("gpus"))
    batches = _ints("--batch-sizes", get("batch_sizes")) or DEFAULT_BATCH_SIZES
    sizes = tuple(sorted({parse_size(s) for s in get("allreduce_bytes")})) if get("allreduce_bytes") else None
    steps = _int("--steps", get("steps"), DEFAULT_STEPS, minimum=1)
    rounds = _int("--rounds", get("rounds"), DEFAULT_ROUNDS, minimum=1)
    warmup = _int("--warmup-steps", get("warmup_steps"), DEFAULT_WARMUP_STEPS, minimum=0)
    iters = _int("--allreduce-iters", get("allreduce_iters"), DEFAULT_ALLREDUCE_ITERS, minimum=1)
    timeout = _seconds("--worker-timeout", get("worker_timeout"), DEFAULT_WORKER_TIMEOUT)
    start_timeout = _seconds(
        "--worker-start-timeout", get("worker_start_timeout"), DEFAULT_WORKER_START_TIMEOUT
    )
    report_dir = Path(get("report_dir") or DEFAULT_REPORT_DIR)
    try:
        check_report_dir(report_dir)
    except ReportDirError as exc:
        raise SweepUsageError(f"--report-dir: {exc}") from None
    try:
        plan = plan_devices(
            device_mode, custom or None, min_memory, bool(get("include_display_gpus")), cpu_replicas
        )
    except (SelectionError, DeviceSetupError) as exc:
        raise SweepUsageError(str(exc)) from None
    selected = plan.num_replicas
    if counts is None:
        counts = default_counts(selected)
    elif max(counts) > selected:
        what = (
            f"--cpu-replicas {selected}"
            if cpu_replicas is not None
            else f"{selected} GPU(s) selected in {device_mode} mode"
            if plan.kind == "gpu"
            else f"no GPU is usable ({plan.fallback_reason}); use --cpu-replicas N"
        )
        raise SweepUsageError(f"--gpus {max(counts)}: more devices than selected ({what})")
    options = SweepOptions(
        gpu_counts=counts,
        batch_sizes=batches,
        scaling=scaling,
        model=model,
        steps=steps,
        rounds=rounds,
        warmup_steps=warmup,
        report_dir=report_dir,
        device_mode=device_mode,
        custom_gpus=custom,
        min_gpu_memory=min_memory,
        include_display_gpus=bool(get("include_display_gpus")),
        cpu_replicas=cpu_replicas,
        allreduce_bytes=sizes if sizes is not None else DEFAULT_ALLREDUCE_BYTES,
        allreduce_iters=iters,
        worker_timeout=timeout,
        worker_start_timeout=start_timeout,
    )
    return options, plan


# -- cases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    benchmark: str  # train | input | allreduce
    gpus: int
    batch_per_gpu: int | None = None
    nbytes: int | None = None

    @property
    def id(self) -> str:
        what = f"b{self.batch_per_gpu}" if self.nbytes is None else format_bytes(self.nbytes).replace(" ", "")
        return f"{self.gpus}dev-{what}"


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


def plan_cases(options: SweepOptions) -> list[Case]:
    """Every benchmark, grouped by device count so each count's worker starts once."""
    configs = training_configs(options)
    cases = []
    for n in options.gpu_counts:
        batches = [b for m, b in configs if m == n]
        cases += [Case("train", n, b) for b in batches]
        cases += [Case("input", n, b) for b in batches]
        if n > 1:  # one replica has nothing to all-reduce with
            cases += [Case("allreduce", n, nbytes=s) for s in options.allreduce_bytes]
    return cases


def allreduce_iters(options: SweepOptions, nbytes: int) -> int:
    """All-reduces per round: --allreduce-iters, fewer for large messages (a whole number of the
    worker's traced calls of ALLREDUCE_UNROLL where there is more than one call)."""
    iters = max(1, min(options.allreduce_iters, ALLREDUCE_BYTES_PER_ROUND // nbytes))
    return iters - iters % ALLREDUCE_UNROLL if iters > ALLREDUCE_UNROLL else iters


# -- environment ----------------------------------------------------------------------------------


def process_started_at() -> float | None:
    """time.time() when this process started (Linux /proc), so pytest's own start-up is counted."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields_after_name = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        started_ticks = int(fields_after_name[19])  # field 22 of proc(5), counted after pid and name
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def cpu_description() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} logical cores"


def environment(plan: DevicePlan) -> dict[str, Any]:
    inventory = plan.inventory
    env: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_description(),
        "driver_version": inventory.driver_version if inventory else None,
        "cuda_driver_version": inventory.cuda_driver_version if inventory else None,
        "gpus": [{k: v for k, v in g.items() if k != "processes"} for g in inventory.to_dict()["gpus"]]
        if inventory
        else [],
        "selected_gpu_names": [g.name for g in plan.gpus],
    }
    try:  # the stack module is read-only metadata; a problem in it must not stop a sweep
        from diagnostics.stack import read_stack

        stack = read_stack()
        build = getattr(stack, "tf_build", None)
        env.update(
            {
                "tensorflow": getattr(stack, "tensorflow", None),
                "keras": getattr(stack, "keras", None),
                "nccl": getattr(stack, "nccl", None),
                "tf_build": (
                    f"CUDA {build.cuda_version}, cuDNN {build.cudnn_version}"
                    if build is not None and build.is_cuda_build
                    else "CPU-only build"
                    if build is not None
                    else None
                ),
            }
        )
    except Exception as exc:
        env["stack_error"] = f"{type(exc).__name__}: {exc}"
    return env


# -- utilisation ----------------------------------------------------------------------------------


class UtilizationSampler:
    """Samples each used GPU's utilisation through NVML in a thread while `active` is set."""

    def __init__(self, gpu_indices: Sequence[int], interval_s: float = UTILIZATION_INTERVAL_S) -> None:
        self.indices, self.interval = list(gpu_indices), interval_s
        self.samples: dict[str, list[float]] = {str(i): [] for i in self.indices}
        self.active = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UtilizationSampler:
        if self.indices:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from diagnostics.nvml import NvmlUnavailable, read_inventory

        while not self._stop.wait(self.interval):
            if not self.active:
                continue
            try:
                inventory = read_inventory(include_links=False, include_processes=False)
            except NvmlUnavailable:
                return
            for index in self.indices:
                gpu = inventory.gpu(index)
                if gpu is not None and gpu.utilization_gpu_pct is not None:
                    self.samples[str(index)].append(float(gpu.utilization_gpu_pct))

    def result(self) -> dict[str, list[float]] | None:
        return self.samples if any(self.samples.values()) else None


# -- the sweep ------------------------------------------------------------------------------------


class CaseFailed(Exception):
    """A case that failed and was recorded; `expected` (out of memory) is a skip, not a failure."""

    def __init__(self, summary: str, expected: bool) -> None:
        super().__init__(summary)
        self.expected = expected


@dataclass
class Sweep:
    options: SweepOptions
    plan: DevicePlan
    started_at: float = field(default_factory=lambda: process_started_at() or time.time())
    train: list[dict[str, Any]] = field(default_factory=list)
    input: list[dict[str, Any]] = field(default_factory=list)
    allreduce: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    benchmark_seconds: float = 0.0
    worker_start_seconds: float = 0.0
    prepare_seconds: float = 0.0
    close_seconds: float = 0.0
    case_seconds: float = 0.0  # inside Sweep.run, from asking for a worker to the last answer
    first_case_at: float | None = None
    ready: dict[int, dict[str, Any]] = field(default_factory=dict)
    _client: WorkerClient | None = None
    _client_gpus: int | None = None
    _start_failures: dict[int, WorkerError] = field(default_factory=dict)
    _logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpudiag-sweep-")))
    _starts: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def unit(self) -> str:
        return "GPU" if self.plan.kind == "gpu" else "CPU device"

    def worker_args(self, gpus: int) -> list[str]:
        o = self.options
        if self.plan.kind != "gpu":
            return ["--cpu-replicas", str(gpus)]
        args = [
            "--gpus",
            str(gpus),
            "--device-mode",
            o.device_mode,
            "--min-gpu-memory",
            str(o.min_gpu_memory),
        ]
        if o.custom_gpus:
            args += ["--custom-gpus", *map(str, o.custom_gpus)]
        if o.include_display_gpus:
            args.append("--include-display-gpus")
        return args

    def worker(self, gpus: int) -> WorkerClient:
        """The live worker for this count; starts one (closing another count's) when needed."""
        if self._client is not None and self._client_gpus == gpus and self._client.proc is not None:
            return self._client
        self.close_worker()
        if gpus in self._start_failures:
            raise self._start_failures[gpus]
        client = WorkerClient(
            self.worker_args(gpus),
            self._logs / f"worker-{gpus}-{next(self._starts)}.log",
            start_timeout=self.options.worker_start_timeout,
        )
        try:
            self.ready[gpus] = client.start()
        except WorkerError as exc:
            self.worker_start_seconds += client.start_seconds
            # a count whose worker cannot start will not start for the next case either
            failure = WorkerError("start", f"worker for {gpus} {self.unit}(s) did not start: {exc}")
            self._start_failures[gpus] = failure
            raise failure from None
        self.worker_start_seconds += client.start_seconds
        self._client, self._client_gpus = client, gpus
        return client

    def close_worker(self) -> None:
        started = time.perf_counter()
        if self._client is not None:
            self._client.close()
        self._client, self._client_gpus = None, None
        self.close_seconds += time.perf_counter() - started

    def _record_failure(self, case: Case, exc: WorkerError) -> CaseFailed:
        # after OOM, a crash or a hang the worker is of no further use: TF keeps GPU memory
        if exc.kind in ("oom", "crash", "timeout"):
            self.close_worker()
        summary = failure_summary(
            case.benchmark, case.gpus, exc.kind, case.batch_per_gpu, case.nbytes, unit=self.unit
        )
        self.failures.append(
            {
                "benchmark": case.benchmark,
                "gpus": case.gpus,
                "batch_per_gpu": case.batch_per_gpu,
                "bytes": case.nbytes,
                "error": exc.kind,
                "message": str(exc),
                "summary": summary,
            }
        )
        return CaseFailed(f"{summary}: {exc}", expected=exc.kind == "oom")

    def run(self, benchmark: Any, case: Case) -> dict[str, Any] | None:
        """Run one case under pytest-benchmark; record its row or its failure (raises CaseFailed)."""
        started = time.perf_counter()
        if self.first_case_at is None:
            self.first_case_at = time.time()
        try:
            return self._run(benchmark, case)
        finally:
            self.case_seconds += time.perf_counter() - started

    def _run(self, benchmark: Any, case: Case) -> dict[str, Any] | None:
        o = self.options
        try:
            client = self.worker(case.gpus)
            if case.benchmark == "allreduce":
                assert case.nbytes is not None
                iters = allreduce_iters(o, case.nbytes)
                request: dict[str, Any] = {"kind": "allreduce", "bytes": case.nbytes, "steps": iters}
                warm_steps, steps = iters, iters
            else:
                request = {"kind": case.benchmark, "model": o.model, "batch_per_replica": case.batch_per_gpu}
                warm_steps, steps = o.warmup_steps, o.steps
            prepared = client.request({"cmd": "prepare", **request}, o.worker_timeout)
            self.prepare_seconds += prepared["seconds"]
            ready = self.ready[case.gpus]
            sampler = UtilizationSampler(ready.get("gpu_indices", []) if case.benchmark == "train" else [])
            warmup_rounds = 1 if warm_steps > 0 else 0
            calls = itertools.count()
            warm: list[float] = []
            measured: list[float] = []
            answers: list[dict[str, Any]] = []

            def setup() -> tuple[tuple[int, bool], dict[str, Any]]:
                is_warm = next(calls) < warmup_rounds
                return (warm_steps if is_warm else steps, is_warm), {}

            def target(k: int, is_warm: bool) -> None:
                sampler.active = not is_warm
                answer = client.request({"cmd": "run", **request, "steps": k}, o.worker_timeout)
                self.benchmark_seconds += answer["seconds"]
                (warm if is_warm else measured).append(answer["seconds"])
                answers.append(answer)

            with sampler:
                benchmark.pedantic(target, setup=setup, rounds=o.rounds, warmup_rounds=warmup_rounds)
        except WorkerError as exc:
            raise self._record_failure(case, exc) from None
        if not measured:  # --benchmark-disable: ran once, measured nothing
            return None
        row: dict[str, Any] = {
            "gpus": case.gpus,
            "round_seconds": measured,
            "warmup_seconds": warm,
            "prepare_seconds": prepared["seconds"],
            "devices": ready.get("devices"),
            "gpu_names": ready.get("gpu_names"),
        }
        if case.benchmark == "allreduce":
            # the worker runs whole traced calls of ALLREDUCE_UNROLL: it says how many it did
            row.update({"bytes": case.nbytes, "iters": answers[-1].get("steps", steps)})
            self.allreduce.append(row)
        else:
            row.update(
                {
                    "batch_per_gpu": case.batch_per_gpu,
                    "global_batch": prepared["global_batch"],
                    "steps": steps,
                    "warmup_steps": warm_steps,
                }
            )
            if case.benchmark == "train":
                row.update(
                    {
                        "flops_per_sample": prepared.get("flops_per_sample"),
                        "gradient_bytes": prepared.get("gradient_bytes"),
                        "trainable_params": prepared.get("trainable_params"),
                        "build_seconds": prepared.get("build_seconds"),
                        "first_step_seconds": prepared.get("first_step_seconds"),
                        "loss": answers[-1].get("loss"),
                        "utilization": sampler.result(),
                    }
                )
                self.train.append(row)
            else:
                self.input.append(row)
        return row

    def has_data(self) -> bool:
        return bool(self.train or self.input or self.allreduce or self.failures)

    def results(self, complete: bool = True) -> dict[str, Any]:
        o = self.options
        env = environment(self.plan)
        if self.ready:
            latest = self.ready[max(self.ready)]
            env.update(
                {
                    "tensorflow": latest.get("tensorflow") or env.get("tensorflow"),
                    "keras": latest.get("keras") or env.get("keras"),
                    "devices": latest.get("devices"),
                    "cross_device_ops": latest.get("cross_device_ops"),
                }
            )
        return {
            "schema": SCHEMA,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "complete": complete,
            "device_kind": self.plan.kind,
            "fallback_reason": self.plan.fallback_reason,
            "model": o.model,
            "scaling": o.scaling,
            "gpu_counts": list(o.gpu_counts),
            "batch_sizes": list(o.batch_sizes),
            "method": {
                "steps_per_round": o.steps,
                "rounds": o.rounds,
                "warmup_steps": o.warmup_steps,
                "warmup_rounds": 1 if o.warmup_steps else 0,
                "allreduce_iters": o.allreduce_iters,
                "allreduce_bytes_per_round": ALLREDUCE_BYTES_PER_ROUND,
                "allreduce_unroll": ALLREDUCE_UNROLL,
                "statistic": "median over rounds",
                "timer": "time.perf_counter() inside the worker, around each round, ending on a host sync",
                "seed": 42,
            },
            "environment": env,
            "harness": self.harness(),
            "train": self.train,
            "input": self.input,
            "allreduce": self.allreduce,
            "failures": self.failures,
        }

    def harness(self) -> dict[str, Any]:
        wall = time.time() - self.started_at
        return {
            "wall_seconds": wall,
            "benchmark_seconds": self.benchmark_seconds,
            "worker_start_seconds": self.worker_start_seconds,
            "prepare_seconds": self.prepare_seconds,
            "close_seconds": self.close_seconds,
            "case_seconds": self.case_seconds,
            "startup_seconds": (self.first_case_at - self.started_at) if self.first_case_at else None,
            "fraction": self.benchmark_seconds / wall if wall > 0 else None,
            "wall_measured_from": "process start" if process_started_at() else "conftest import",
        }

"""`gpudiag monitor`: sample utilisation, memory, power, temperature, SM clock and clock event
reasons per GPU (like `nvidia-smi dmon`), then flag imbalance between the selected GPUs. Sampling
takes any callable that returns an Inventory, so the logic runs the same on recorded samples as on
the live machine.

`BackgroundSampler` runs the same sampling loop in a thread, for a program busy with other work
(the benchmark sweep samples while its workers train, the trainer while it trains); `readings`
sums one watched period up per GPU, `least_busy_of` names the GPU the others leave behind and what
the samples say about why. `throttling` is the one rule for which clock event reasons mean a GPU is
held back (the `clocks` check, the sweep's report and the trainer's summary use it).
"""

from __future__ import annotations

import csv
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import IO, TypeVar

from diagnostics.inventory import Inventory, Pcie

# Synchronous data-parallel training keeps every GPU equally busy; a spread wider than this between
# the busiest and the idlest selected GPU means one of them waits (display GPU, slow link, throttling).
IMBALANCE_POINTS = 25.0
K = TypeVar("K", int, str)  # a GPU's index, or its index as text (a report's JSON keys)
CSV_FIELDS = (
    "time_s",
    "gpu",
    "utilization_gpu_pct",
    "memory_used_mib",
    "power_draw_w",
    "temperature_c",
    "sm_clock_mhz",
    "sm_clock_max_mhz",
    "clocks_event_reasons",  # NVML's names, separated by ';' (empty: none active, or not reported)
)
# The clock event reasons (diagnostics/nvml.py's names for NVML's bits, nvidia-smi's too) that hold a
# GPU below the clock it would run at: heat, power, a hardware signal. Idle, application-clock
# settings, sync boost and display clock settings are choices, not throttling, and are not here.
THROTTLE_REASONS = MappingProxyType(
    {
        "hw_slowdown": "hardware slowdown",
        "hw_thermal_slowdown": "thermal slowdown",
        "sw_thermal_slowdown": "thermal slowdown",
        "hw_power_brake_slowdown": "power brake",
        "sw_power_cap": "power cap",
    }
)


def throttling(reasons: Iterable[str] | None) -> list[str]:
    """The reasons among `reasons` that mean throttling, in words, sorted, each once ([] for none)."""
    return sorted({THROTTLE_REASONS[r] for r in reasons or () if r in THROTTLE_REASONS})


@dataclass(frozen=True)
class Sample:
    time_s: float
    gpu: int
    utilization_gpu_pct: float | None
    memory_used_mib: int | None
    power_draw_w: float | None
    temperature_c: float | None
    sm_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    clocks_event_reasons: tuple[str, ...] | None = None  # None: the driver does not report them
    pcie: Pcie | None = None  # the link now (it trains down when idle) and its maximum
    display_active: bool | None = None


def samples_from(inventory: Inventory, time_s: float) -> list[Sample]:
    return [
        Sample(
            time_s,
            g.index,
            g.utilization_gpu_pct,
            g.memory_used_mib,
            g.power_draw_w,
            g.temperature_c,
            sm_clock_mhz=g.sm_clock_mhz,
            sm_clock_max_mhz=g.sm_clock_max_mhz,
            clocks_event_reasons=g.clocks_event_reasons,
            pcie=g.pcie,
            display_active=g.display_active,
        )
        for g in inventory.gpus
    ]


def sample_loop(
    read: Callable[[], Inventory],
    interval_s: float,
    duration_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[list[Sample]]:
    start = clock()
    while True:
        now = clock() - start
        yield samples_from(read(), round(now, 3))
        if now + interval_s > duration_s:
            return
        sleep(interval_s)


class BackgroundSampler:
    """`sample_loop` in a daemon thread while the context is open; keeps the samples of `gpus`
    taken while `active` is true (the caller switches it around the work it wants watched).

    A `read` that raises ends the sampling and is kept in `error`: watching must never stop the
    work it watches (no NVML on this machine, a GPU that fell off the bus).
    """

    def __init__(self, read: Callable[[], Inventory], gpus: Sequence[int], interval_s: float) -> None:
        self.read, self.gpus, self.interval_s = read, list(gpus), interval_s
        self.samples: list[Sample] = []
        self.active = False
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def __enter__(self) -> BackgroundSampler:
        if self.gpus:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        wanted = set(self.gpus)
        try:
            # Event.wait as the sleep: closing the context wakes the loop at once
            for batch in sample_loop(self.read, self.interval_s, math.inf, sleep=self._stop.wait):
                if self._stop.is_set():
                    return
                if self.active:
                    self.samples += [s for s in batch if s.gpu in wanted]
        except Exception as exc:
            self.error = exc


def utilization_by_gpu(rows: Sequence[Sample], gpus: Sequence[int]) -> dict[int, list[float]]:
    """Each of `gpus`' known utilisation samples, in order (empty for a GPU without any)."""
    return {
        gpu: [
            float(s.utilization_gpu_pct) for s in rows if s.gpu == gpu and s.utilization_gpu_pct is not None
        ]
        for gpu in gpus
    }


def format_row(s: Sample) -> str:
    def cell(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.0f}"

    held = ", ".join(throttling(s.clocks_event_reasons))
    return (
        f"{s.time_s:>8.1f} {s.gpu:>4} {cell(s.utilization_gpu_pct, 4)} {cell(s.memory_used_mib, 8)} "
        f"{cell(s.power_draw_w, 5)} {cell(s.temperature_c, 4)} {cell(s.sm_clock_mhz, 6)} {held}"
    ).rstrip()


HEADER = "# time_s  gpu   sm%  mem_mib  pwr_w temp sm_mhz throttled"


def write_csv(handle: IO[str], rows: Sequence[Sample]) -> None:
    def cell(value: object) -> object:
        if isinstance(value, tuple):
            return ";".join(value)
        return "" if value is None else value

    writer = csv.writer(handle)
    writer.writerow(CSV_FIELDS)
    for s in rows:
        writer.writerow([cell(getattr(s, name)) for name in CSV_FIELDS])


def lagging(means: Mapping[K, float]) -> list[K]:
    """The GPUs whose mean utilisation is more than IMBALANCE_POINTS below the busiest one's: the one
    definition of uneven usage, for `gpudiag monitor` and the scaling report alike."""
    if not means:
        return []
    busiest = max(means.values())
    return sorted(gpu for gpu, mean in means.items() if busiest - mean > IMBALANCE_POINTS)


def imbalance(rows: Sequence[Sample], gpus: Sequence[int]) -> str | None:
    """A sentence when the selected GPUs' mean utilisations differ by more than IMBALANCE_POINTS."""
    means = {
        gpu: statistics.fmean(values) for gpu, values in utilization_by_gpu(rows, gpus).items() if values
    }
    if not lagging(means):
        return None
    busiest = max(means, key=lambda g: means[g])
    idlest = min(means, key=lambda g: means[g])
    return (
        f"uneven GPU usage: GPU {busiest} averaged {means[busiest]:.0f}% busy, GPU {idlest} "
        f"{means[idlest]:.0f}%: "
        "in synchronous training one GPU is waiting for another (display GPU, slower model, thermal "
        "throttling, a slow PCIe link, or an input pipeline that cannot feed them): run `gpudiag check` "
        "(see TROUBLESHOOTING.md#uneven-gpu-usage)"
    )


@dataclass(frozen=True)
class GpuReadings:
    """One GPU's samples over a watched period, summed up (None: never reported)."""

    gpu: int
    samples: int
    utilization_pct_mean: float | None
    memory_used_mib_max: int | None  # NVML's used memory: every process on the GPU, not only ours
    power_w_mean: float | None
    temperature_c_max: float | None
    sm_clock_mhz_median: float | None
    sm_clock_mhz_min: int | None
    sm_clock_max_mhz: int | None  # the GPU's own top SM clock
    clocks_event_reasons: tuple[str, ...] | None  # every reason seen in any sample, sorted
    throttled_samples: int  # samples with a reason `throttling` counts
    pcie: Pcie | None  # the fastest it ran (generation, width: each at its highest) and its maximum
    display_active: bool | None  # True if any sample saw a display on it

    @property
    def throttling(self) -> list[str]:
        return throttling(self.clocks_event_reasons)


def _known(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _top(values: Iterable[int | None]) -> int | None:
    found = [v for v in values if v is not None]
    return max(found) if found else None


def _fastest_link(rows: Sequence[Sample]) -> Pcie | None:
    # a link trains down between bursts of traffic: what it reached at its fastest is what it can do
    links = [s.pcie for s in rows if s.pcie is not None]
    if not links:
        return None
    return Pcie(
        gen_current=_top(p.gen_current for p in links),
        gen_max=_top(p.gen_max for p in links),
        width_current=_top(p.width_current for p in links),
        width_max=_top(p.width_max for p in links),
    )


def _summed_up(gpu: int, rows: Sequence[Sample]) -> GpuReadings:
    util, power = _known(s.utilization_gpu_pct for s in rows), _known(s.power_draw_w for s in rows)
    temps = _known(s.temperature_c for s in rows)
    clocks = [s.sm_clock_mhz for s in rows if s.sm_clock_mhz is not None]
    reported = [s.clocks_event_reasons for s in rows if s.clocks_event_reasons is not None]
    displays = [s.display_active for s in rows if s.display_active is not None]
    return GpuReadings(
        gpu=gpu,
        samples=len(rows),
        utilization_pct_mean=round(statistics.fmean(util), 1) if util else None,
        memory_used_mib_max=_top(s.memory_used_mib for s in rows),
        power_w_mean=round(statistics.fmean(power), 1) if power else None,
        temperature_c_max=max(temps) if temps else None,
        sm_clock_mhz_median=float(statistics.median(clocks)) if clocks else None,
        sm_clock_mhz_min=min(clocks) if clocks else None,
        sm_clock_max_mhz=_top(s.sm_clock_max_mhz for s in rows),
        clocks_event_reasons=tuple(sorted({r for rs in reported for r in rs})) if reported else None,
        throttled_samples=sum(1 for rs in reported if throttling(rs)),
        pcie=_fastest_link(rows),
        display_active=any(displays) if displays else None,
    )


def readings(rows: Sequence[Sample], gpus: Sequence[int]) -> dict[int, GpuReadings]:
    """Each of `gpus` that has samples among `rows`, summed up."""
    return {gpu: _summed_up(gpu, own) for gpu in gpus if (own := [s for s in rows if s.gpu == gpu])}


def slow_link(pcie: Pcie | None) -> str | None:
    """'Gen3 x8, below its Gen4 x16' where the link ran below its maximum generation or width."""
    if pcie is None:
        return None
    gen = pcie.gen_current is not None and pcie.gen_max is not None and pcie.gen_current < pcie.gen_max
    width = (
        pcie.width_current is not None and pcie.width_max is not None and pcie.width_current < pcie.width_max
    )
    if not (gen or width):
        return None

    def link(generation: int | None, lanes: int | None) -> str:
        return f"Gen{generation if generation is not None else '?'} x{lanes if lanes is not None else '?'}"

    return f"{link(pcie.gen_current, pcie.width_current)}, below its {link(pcie.gen_max, pcie.width_max)}"


def likely_causes(found: GpuReadings) -> list[str]:
    """What the samples show that keeps this GPU from the others' pace: a display, throttling, a
    PCIe link below its maximum (empty: none of these)."""
    causes = []
    if found.display_active:
        causes.append("it drives a display")
    if found.throttling:
        causes.append(
            f"it was throttled ({', '.join(found.throttling)}) in {found.throttled_samples} of "
            f"{found.samples} samples"
        )
    link = slow_link(found.pcie)
    if link:
        causes.append(f"its PCIe link ran at {link} at its fastest")
    return causes


@dataclass(frozen=True)
class LeastBusy:
    """The least busy of GPUs whose utilisation is uneven (`lagging`), and why, as far as its samples tell."""

    gpu: int
    utilization_pct_mean: float
    busiest_gpu: int
    busiest_utilization_pct_mean: float
    lagging: tuple[int, ...]  # every GPU `lagging` names, the least busy among them
    causes: tuple[str, ...]  # its own (likely_causes), else another GPU's throttling that all wait for


def least_busy_of(found: Mapping[int, GpuReadings]) -> LeastBusy | None:
    """None while the GPUs' mean utilisations are within IMBALANCE_POINTS of each other."""
    means = {gpu: r.utilization_pct_mean for gpu, r in found.items() if r.utilization_pct_mean is not None}
    behind = lagging(means)
    if not behind:
        return None
    idlest = min(behind, key=lambda gpu: (means[gpu], gpu))
    busiest = max(means, key=lambda gpu: (means[gpu], -gpu))
    causes = likely_causes(found[idlest])
    if not causes:
        # a throttled GPU is slow, not idle: the others, this one included, wait for it every step
        causes = [
            f"GPU {gpu} was throttled ({', '.join(r.throttling)}) and every step waits for it"
            for gpu, r in sorted(found.items())
            if r.throttling
        ]
    return LeastBusy(
        gpu=idlest,
        utilization_pct_mean=means[idlest],
        busiest_gpu=busiest,
        busiest_utilization_pct_mean=means[busiest],
        lagging=tuple(behind),
        causes=tuple(causes),
    )

"""`gpudiag monitor`: sample utilisation, memory, power and temperature per GPU (like
`nvidia-smi dmon`), then flag imbalance between the selected GPUs. Sampling takes any callable that
returns an Inventory, so the logic runs the same on recorded samples as on the live machine.

`BackgroundSampler` runs the same sampling loop in a thread, for a program busy with other work
(the benchmark sweep samples utilisation while its workers train).
"""

from __future__ import annotations

import csv
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TypeVar

from diagnostics.inventory import Inventory

# Synchronous data-parallel training keeps every GPU equally busy; a spread wider than this between
# the busiest and the idlest selected GPU means one of them waits (display GPU, slow link, throttling).
IMBALANCE_POINTS = 25.0
K = TypeVar("K", int, str)  # a GPU's index, or its index as text (a report's JSON keys)
CSV_FIELDS = ("time_s", "gpu", "utilization_gpu_pct", "memory_used_mib", "power_draw_w", "temperature_c")


@dataclass(frozen=True)
class Sample:
    time_s: float
    gpu: int
    utilization_gpu_pct: float | None
    memory_used_mib: int | None
    power_draw_w: float | None
    temperature_c: float | None


def samples_from(inventory: Inventory, time_s: float) -> list[Sample]:
    return [
        Sample(time_s, g.index, g.utilization_gpu_pct, g.memory_used_mib, g.power_draw_w, g.temperature_c)
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

    return (
        f"{s.time_s:>8.1f} {s.gpu:>4} {cell(s.utilization_gpu_pct, 4)} {cell(s.memory_used_mib, 8)} "
        f"{cell(s.power_draw_w, 5)} {cell(s.temperature_c, 4)}"
    )


HEADER = "# time_s  gpu   sm%  mem_mib  pwr_w temp"


def write_csv(handle: IO[str], rows: Sequence[Sample]) -> None:
    writer = csv.writer(handle)
    writer.writerow(CSV_FIELDS)
    for s in rows:
        writer.writerow([getattr(s, name) if getattr(s, name) is not None else "" for name in CSV_FIELDS])


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

"""`gpudiag monitor`: sample utilisation, memory, power and temperature per GPU (like
`nvidia-smi dmon`), then flag imbalance between the selected GPUs. Sampling takes any callable that
returns an Inventory, so the logic runs the same on recorded samples as on the live machine.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from diagnostics.inventory import Inventory

# Synchronous data-parallel training keeps every GPU equally busy; a spread wider than this between
# the busiest and the idlest selected GPU means one of them waits (display GPU, slow link, throttling).
IMBALANCE_POINTS = 25.0
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
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[Sample]]:
    start = clock()
    while True:
        now = clock() - start
        yield samples_from(read(), round(now, 3))
        if now + interval_s > duration_s:
            return
        sleep(interval_s)


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


def imbalance(rows: Sequence[Sample], gpus: Sequence[int]) -> str | None:
    """A sentence when the selected GPUs' mean utilisations differ by more than IMBALANCE_POINTS."""
    means = {}
    for gpu in gpus:
        values = [s.utilization_gpu_pct for s in rows if s.gpu == gpu and s.utilization_gpu_pct is not None]
        if values:
            means[gpu] = statistics.fmean(values)
    if len(means) < 2:
        return None
    busiest = max(means, key=lambda g: means[g])
    idlest = min(means, key=lambda g: means[g])
    if means[busiest] - means[idlest] <= IMBALANCE_POINTS:
        return None
    return (
        f"uneven GPU usage: GPU {busiest} averaged {means[busiest]:.0f}% busy, GPU {idlest} "
        f"{means[idlest]:.0f}%: "
        "in synchronous training one GPU is waiting for another (display GPU, slower model, thermal "
        "throttling, a slow PCIe link, or an input pipeline that cannot feed them): run `gpudiag check` "
        "(see TROUBLESHOOTING.md#uneven-gpu-usage)"
    )

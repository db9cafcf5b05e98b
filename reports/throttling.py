"""Training cases measured while a GPU was throttled: the clock event reasons the sweep sampled during
their measured rounds (`TrainRow.clocks`), judged by diagnostics.monitor.throttling, the same rule
as `gpudiag check`'s `clocks` check. A throttled GPU sets the pace of every synchronous step, so the
throughput table marks such a case and the recommendations blame the throttling, not the scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnostics.monitor import throttling
from reports.results import GpuClocks, Results, TrainRow
from reports.variants import baseline_results

GUIDE = "TROUBLESHOOTING.md#hot-or-throttling-gpus"


@dataclass(frozen=True)
class ThrottledCase:
    gpus: int
    batch_per_gpu: int
    mark: str  # beside the case's efficiency: †1, †2, ...
    why: str  # the throttled GPUs and what held them back (`describe`)


def throttled_gpus(row: TrainRow | None) -> list[GpuClocks]:
    """The GPUs of `row` that a throttling reason held back while it was measured."""
    if row is None or row.clocks is None:
        return []
    return [g for g in row.clocks.gpus if throttling(g.clocks_event_reasons)]


def _gpu(g: GpuClocks) -> str:
    facts = [f"{g.throttled_samples} of {g.samples} samples"]
    if g.sm_clock_mhz_median is not None:
        top = f" of {g.sm_clock_max_mhz}" if g.sm_clock_max_mhz else ""
        low = f", min {g.sm_clock_mhz_min}" if g.sm_clock_mhz_min is not None else ""
        facts.append(f"SM clock {g.sm_clock_mhz_median:.0f}{top} MHz median{low}")
    if g.temperature_c_max is not None:
        facts.append(f"{g.temperature_c_max:g} °C max")
    if g.power_w_mean is not None:
        facts.append(f"{g.power_w_mean:.0f} W mean")
    return f"GPU {g.gpu} held back by {', '.join(throttling(g.clocks_event_reasons))} ({'; '.join(facts)})"


def describe(row: TrainRow | None) -> str | None:
    """'GPU 1 held back by power cap, thermal slowdown (12 of 40 samples; SM clock 1125 of 1410 MHz
    median, min 1080; 91 °C max; 290 W mean)', one entry per throttled GPU; None when none was."""
    hot = throttled_gpus(row)
    return "; ".join(_gpu(g) for g in hot) if hot else None


def throttled_cases(results: Results) -> list[ThrottledCase]:
    """The baseline variant's training cases measured while throttled, each with its mark."""
    found: list[ThrottledCase] = []
    seen: set[tuple[int, int]] = set()
    for row in sorted(baseline_results(results).train, key=lambda r: (r.gpus, r.batch_per_gpu)):
        why = describe(row)
        if why is None or (row.gpus, row.batch_per_gpu) in seen:
            continue
        seen.add((row.gpus, row.batch_per_gpu))
        found.append(ThrottledCase(row.gpus, row.batch_per_gpu, f"†{len(found) + 1}", why))
    return found


def footnotes(cases: list[ThrottledCase], unit: str) -> list[str]:
    """The lines under the throughput tables that explain each mark."""
    if not cases:
        return []
    lines = [
        f"- {c.mark} {c.gpus} {unit}(s) at {c.batch_per_gpu} per {unit}: measured while throttled: "
        f"{c.why}. Every synchronous step waits for the slowest GPU, so this rate and its efficiency "
        "reflect the throttling, not how the work scales."
        for c in cases
    ]
    return [
        *lines,
        f"- Throttling: the clock event reasons NVML reported during the measured rounds (thermal, power "
        f"cap, power brake, hardware slowdown; not idle or application clocks); see {GUIDE}.",
        "",
    ]

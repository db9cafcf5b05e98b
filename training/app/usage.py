"""What a run used of its GPUs while it trained: each selected GPU's mean utilisation and power, its
peak memory used and any throttling, sampled through NVML in a background thread
(diagnostics.monitor's BackgroundSampler) for the summary; and, where their utilisation is uneven,
the least busy GPU with its likely cause from the same samples (it drives a display, it was
throttled, its PCIe link ran below its maximum). On CPU replicas there is nothing to sample and the
summary says None.

Sampling reads the same Inventory as `gpudiag monitor`, so a recorded inventory replays it in tests.
A sampler that fails (no NVML, a GPU gone) leaves the figures out; it never stops training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from diagnostics.inventory import Inventory
from diagnostics.monitor import (
    IMBALANCE_POINTS,
    THROTTLE_REASONS,
    BackgroundSampler,
    least_busy_of,
    readings,
    throttling,
)

INTERVAL_S = 0.5  # NVML's utilisation is an average over its own sample period (1/6 s to 1 s)
GUIDE = "TROUBLESHOOTING.md#uneven-gpu-usage"


def live_reader() -> Inventory:
    from diagnostics.nvml import read_inventory

    return read_inventory(include_links=False, include_processes=False)


def sampler(gpus: Sequence[int], read: Callable[[], Inventory] = live_reader) -> BackgroundSampler:
    """A sampler of the NVML indices `gpus` (none on CPU replicas: it then starts no thread)."""
    return BackgroundSampler(read, gpus, INTERVAL_S)


def summarize(watched: BackgroundSampler) -> dict[str, dict[str, Any]] | None:
    """{NVML index: {utilization_pct_mean, power_w_mean, memory_used_mib_max, throttle_reasons,
    samples}}, or None without samples. memory_used_mib_max is NVML's used memory at its highest
    (every process on the GPU; TensorFlow reserves most of it up front unless memory growth is on);
    throttle_reasons the clock event reasons seen that mean throttling (NVML's names)."""
    found: dict[str, dict[str, Any]] = {}
    for gpu, r in readings(watched.samples, watched.gpus).items():
        found[str(gpu)] = {
            "utilization_pct_mean": r.utilization_pct_mean,
            "power_w_mean": r.power_w_mean,
            "memory_used_mib_max": r.memory_used_mib_max,
            "throttle_reasons": [x for x in r.clocks_event_reasons or () if x in THROTTLE_REASONS],
            "samples": r.samples,
        }
    return found or None


def least_busy(watched: BackgroundSampler) -> dict[str, Any] | None:
    """The least busy GPU where the selected GPUs' mean utilisations spread more than
    IMBALANCE_POINTS (diagnostics.monitor.lagging): {gpu, utilization_pct_mean, busiest_gpu,
    busiest_utilization_pct_mean, lagging, causes}; None while they are even."""
    found = least_busy_of(readings(watched.samples, watched.gpus))
    if found is None:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(found).items()}


def describe(found: dict[str, Any] | None) -> str | None:
    """The summary's line on the least busy GPU (None: usage was even, or not sampled)."""
    if not found:
        return None
    head = (
        f"GPU {found['gpu']} averaged {found['utilization_pct_mean']:.0f}% busy against GPU "
        f"{found['busiest_gpu']}'s {found['busiest_utilization_pct_mean']:.0f}% (more than "
        f"{IMBALANCE_POINTS:.0f} points apart)"
    )
    causes = found.get("causes") or []
    why = (
        "; ".join(causes)
        if causes
        else "no display, throttling or slow PCIe link seen on it: look for another process on it "
        "or a slower card (`gpudiag check`)"
    )
    return f"{head}: {why}; a synchronous step runs at the slowest replica's pace (see {GUIDE})"


def describe_gpus(per_gpu: dict[str, dict[str, Any]]) -> str:
    """The summary table's cell: one line per GPU (utilisation, power, peak memory, throttling)."""

    def num(value: float | None, unit: str) -> str:
        return "n/a" if value is None else f"{value:,.0f}{unit}"

    lines = []
    for gpu, u in per_gpu.items():
        held = throttling(u.get("throttle_reasons"))
        lines.append(
            f"GPU {gpu}: {num(u.get('utilization_pct_mean'), '%')} busy, {num(u.get('power_w_mean'), ' W')}, "
            f"{num(u.get('memory_used_mib_max'), ' MiB')} peak"
            + (f", throttled ({', '.join(held)})" if held else "")
        )
    return "\n".join(lines)

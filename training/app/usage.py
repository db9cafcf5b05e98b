"""What a run used of its GPUs while it trained: each selected GPU's mean utilisation and power,
sampled through NVML in a background thread (diagnostics.monitor's BackgroundSampler) for the
summary. On CPU replicas there is nothing to sample and the summary says None.

Sampling reads the same Inventory as `gpudiag monitor`, so a recorded inventory replays it in tests.
A sampler that fails (no NVML, a GPU gone) leaves the figures out; it never stops training.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from diagnostics.inventory import Inventory
from diagnostics.monitor import BackgroundSampler

INTERVAL_S = 0.5  # NVML's utilisation is an average over its own sample period (1/6 s to 1 s)


def live_reader() -> Inventory:
    from diagnostics.nvml import read_inventory

    return read_inventory(include_links=False, include_processes=False)


def sampler(gpus: Sequence[int], read: Callable[[], Inventory] = live_reader) -> BackgroundSampler:
    """A sampler of the NVML indices `gpus` (none on CPU replicas: it then starts no thread)."""
    return BackgroundSampler(read, gpus, INTERVAL_S)


def summarize(watched: BackgroundSampler) -> dict[str, dict[str, Any]] | None:
    """{NVML index: {utilization_pct_mean, power_w_mean, samples}}, or None without samples."""
    found: dict[str, dict[str, Any]] = {}
    for gpu in watched.gpus:
        rows = [s for s in watched.samples if s.gpu == gpu]
        utilization = [float(s.utilization_gpu_pct) for s in rows if s.utilization_gpu_pct is not None]
        power = [float(s.power_draw_w) for s in rows if s.power_draw_w is not None]
        if rows:
            found[str(gpu)] = {
                "utilization_pct_mean": round(statistics.fmean(utilization), 1) if utilization else None,
                "power_w_mean": round(statistics.fmean(power), 1) if power else None,
                "samples": len(rows),
            }
    return found or None

"""training.app.usage: the summary's per-GPU utilisation, power and peak memory, sampled while
training, and the least busy GPU named with its likely cause when usage is uneven. Replayed from a
recorded inventory whose readings change from one read to the next, as NVML's would."""

from __future__ import annotations

import dataclasses
import io
import itertools
import time
from collections.abc import Callable
from typing import Any

from diagnostics.inventory import Inventory, Pcie, load_inventory
from diagnostics.monitor import BackgroundSampler
from training.app import usage


def test_means_per_watched_gpu_from_samples_taken_while_active(fixture_path, monkeypatch):
    recorded = load_inventory(fixture_path("example-server-4xa100.json"))
    readings = itertools.cycle([(40.0, 100.0), (80.0, 300.0)])  # (utilisation %, watts)

    def read():
        util, watts = next(readings)
        gpus = tuple(
            dataclasses.replace(g, utilization_gpu_pct=util, power_draw_w=watts) for g in recorded.gpus
        )
        return dataclasses.replace(recorded, gpus=gpus)

    monkeypatch.setattr(usage, "INTERVAL_S", 0.01)
    with usage.sampler([1, 3], read) as watching:
        watching.active = True
        deadline = time.monotonic() + 10
        while len({s.time_s for s in watching.samples}) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        watching.active = False
    found = usage.summarize(watching)
    assert found is not None and set(found) == {"1", "3"}  # GPUs 0 and 2 were not watched
    for figures in found.values():
        n = figures["samples"]
        assert n >= 4
        # alternate readings: the mean lies between them, at their midpoint for an even count
        assert 40.0 <= figures["utilization_pct_mean"] <= 80.0
        assert 100.0 <= figures["power_w_mean"] <= 300.0
        if n % 2 == 0:
            assert figures["utilization_pct_mean"] == 60.0 and figures["power_w_mean"] == 200.0


def test_no_gpus_means_no_thread_and_no_figures():
    def read():
        raise AssertionError("a CPU run never reads NVML")

    with usage.sampler([], read) as watching:
        watching.active = True
    assert usage.summarize(watching) is None and watching.error is None


def test_a_failing_reader_leaves_the_figures_out(fixture_path):
    def read():
        raise RuntimeError("GPU has fallen off the bus")

    with usage.sampler([0], read) as watching:
        watching.active = True
        watching._thread.join(timeout=5)
    assert usage.summarize(watching) is None
    assert isinstance(watching.error, RuntimeError)


def _watched(
    monkeypatch, read: Callable[[], Inventory], gpus: list[int], reads: int = 4
) -> BackgroundSampler:
    """`gpus` sampled while active until `reads` distinct reads are kept."""
    monkeypatch.setattr(usage, "INTERVAL_S", 0.01)
    with usage.sampler(gpus, read) as watching:
        watching.active = True
        deadline = time.monotonic() + 10
        while len({s.time_s for s in watching.samples}) < reads and time.monotonic() < deadline:
            time.sleep(0.01)
        watching.active = False
    return watching


def _replay(recorded: Inventory, readings: dict[int, list[dict[str, Any]]]) -> Callable[[], Inventory]:
    """Each read of the recorded machine with GPU i changed as the next of readings[i] says."""
    turns = {gpu: itertools.cycle(changes) for gpu, changes in readings.items()}

    def read() -> Inventory:
        step = {gpu: next(turn) for gpu, turn in turns.items()}
        gpus = tuple(dataclasses.replace(g, **step.get(g.index, {})) for g in recorded.gpus)
        return dataclasses.replace(recorded, gpus=gpus)

    return read


def test_the_least_busy_gpu_is_named_with_its_narrow_pcie_link(fixture_path, monkeypatch):
    recorded = load_inventory(fixture_path("example-server-4xa100.json"))
    busy = [{"utilization_gpu_pct": u, "memory_used_mib": m} for u, m in ((94.0, 30_000), (98.0, 31_000))]
    slow = [  # GPU 2: far less busy, its link trained to Gen3 x8 at best
        {"utilization_gpu_pct": 45.0, "memory_used_mib": 29_000, "pcie": Pcie(3, 4, 8, 16)},
        {"utilization_gpu_pct": 55.0, "memory_used_mib": 29_500, "pcie": Pcie(2, 4, 8, 16)},
    ]
    watching = _watched(monkeypatch, _replay(recorded, {0: busy, 1: busy, 2: slow, 3: busy}), [0, 1, 2, 3])
    per_gpu = usage.summarize(watching)
    assert per_gpu is not None and per_gpu["2"]["memory_used_mib_max"] == 29_500
    assert per_gpu["0"]["memory_used_mib_max"] == 31_000 and per_gpu["0"]["throttle_reasons"] == []
    named = usage.least_busy(watching)
    assert named is not None and named["gpu"] == 2 and named["lagging"] == [2]
    assert named["causes"] == ["its PCIe link ran at Gen3 x8, below its Gen4 x16 at its fastest"]
    line = usage.describe(named)
    assert line is not None and line.startswith("GPU 2 averaged") and "Gen3 x8" in line


def test_a_balanced_run_names_no_gpu(fixture_path, monkeypatch):
    recorded = load_inventory(fixture_path("example-server-4xa100.json"))
    even = [{"utilization_gpu_pct": 90.0}, {"utilization_gpu_pct": 97.0}]
    watching = _watched(monkeypatch, _replay(recorded, {g: even for g in range(4)}), [0, 1, 2, 3])
    assert usage.summarize(watching) is not None
    assert usage.least_busy(watching) is None and usage.describe(None) is None


def test_a_recorded_display_gpu_and_a_throttled_one_are_the_causes_named(fixture_path, monkeypatch):
    """example-workstation-2x4090: GPU 0 drives the display (as recorded, not changed here)."""
    recorded = load_inventory(fixture_path("example-workstation-2x4090.json"))
    read = _replay(recorded, {0: [{"utilization_gpu_pct": 40.0}], 1: [{"utilization_gpu_pct": 96.0}]})
    named = usage.least_busy(_watched(monkeypatch, read, [0, 1]))
    assert named is not None and named["gpu"] == 0 and named["causes"] == ["it drives a display"]
    hot = {"utilization_gpu_pct": 40.0, "clocks_event_reasons": ("hw_thermal_slowdown",)}
    read = _replay(recorded, {0: [{"utilization_gpu_pct": 96.0}], 1: [hot]})
    watching = _watched(monkeypatch, read, [0, 1])
    named = usage.least_busy(watching)
    assert named is not None and named["gpu"] == 1
    assert named["causes"][0].startswith("it was throttled (thermal slowdown)")
    assert (usage.summarize(watching) or {})["1"]["throttle_reasons"] == ["hw_thermal_slowdown"]


def test_the_summary_prints_usage_per_gpu_and_the_least_busy_line():
    from dataclasses import fields

    from training.app.render import print_summary
    from training.app.summary import RunSummary

    named = {"gpu": 2, "utilization_pct_mean": 50.0, "busiest_gpu": 0, "busiest_utilization_pct_mean": 96.0,
             "lagging": [2], "causes": ["it drives a display"]}  # fmt: skip
    gpus = {"0": {"utilization_pct_mean": 96.0, "power_w_mean": 310.0, "memory_used_mib_max": 31_000,
                  "throttle_reasons": ["sw_power_cap"], "samples": 8}}  # fmt: skip
    values: dict[str, Any] = {f.name: None for f in fields(RunSummary)}
    values.update(
        model="mlp", data="synthetic", device_kind="gpu", replicas=2, devices=["GPU:0"], warmup_steps=0,
        validation_data=None, gpu_usage=gpus, least_busy_gpu=named,
    )  # fmt: skip
    out = io.StringIO()
    print_summary(RunSummary(**values), out)
    text = out.getvalue()
    assert "GPU 0: 96% busy, 310 W, 31,000 MiB peak, throttled (power cap)" in text
    assert "least busy GPU: GPU 2 averaged 50% busy against GPU 0's 96%" in text
    assert "it drives a display" in text

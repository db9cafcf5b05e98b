"""training.app.usage: the summary's per-GPU utilisation and power, sampled while training. Replayed
from a recorded inventory whose readings change from one read to the next, as NVML's would."""

from __future__ import annotations

import dataclasses
import itertools
import time

from diagnostics.inventory import load_inventory
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

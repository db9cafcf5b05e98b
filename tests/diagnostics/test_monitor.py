"""Monitor sampling and the imbalance rule, on recorded samples."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from diagnostics.inventory import Gpu, Inventory, Pcie, load_inventory
from diagnostics.monitor import (
    CSV_FIELDS,
    THROTTLE_REASONS,
    BackgroundSampler,
    Sample,
    format_row,
    imbalance,
    least_busy_of,
    readings,
    sample_loop,
    samples_from,
    slow_link,
    throttling,
    utilization_by_gpu,
    write_csv,
)


def samples(util: dict[int, list[float]]) -> list[Sample]:
    return [
        Sample(float(t), gpu, u, 0, 100.0, 50.0) for gpu, values in util.items() for t, u in enumerate(values)
    ]


def test_imbalance_flags_95_vs_40():
    text = imbalance(samples({0: [95, 96, 94], 1: [40, 41, 39]}), [0, 1])
    assert text is not None and "GPU 0" in text and "GPU 1" in text


def test_balanced_gpus_are_not_flagged():
    assert imbalance(samples({0: [90, 92], 1: [88, 91]}), [0, 1]) is None


def test_only_selected_gpus_count():
    assert imbalance(samples({0: [95], 1: [90], 2: [0]}), [0, 1]) is None


def test_unknown_utilisation_is_ignored():
    assert imbalance([Sample(0, 0, None, None, None, None), Sample(0, 1, 50, 0, 0, 0)], [0, 1]) is None


def test_sample_loop_stops_at_duration():
    now = [0.0]

    def clock() -> float:
        return now[0]

    def sleep(s: float) -> None:
        now[0] += s

    batches = list(sample_loop(lambda: Inventory("570", "12.8"), 1.0, 3.0, clock, sleep))
    assert len(batches) == 4


def _gpu(index: int, utilization: float | None) -> Gpu:
    return Gpu(index, "GPU", f"GPU-{index}", f"0000:0{index}:00.0", 8192, "8.9", False,
               utilization_gpu_pct=utilization)  # fmt: skip


def test_utilization_by_gpu_keeps_known_values_of_the_chosen_gpus():
    rows = [*samples({0: [95, 96], 1: [40], 2: [10]}), Sample(9, 0, None, None, None, None)]
    assert utilization_by_gpu(rows, [0, 1, 3]) == {0: [95.0, 96.0], 1: [40.0], 3: []}


def _wait_for(condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the sampler thread did not get there in 5 s"
        time.sleep(0.005)


def test_background_sampler_keeps_only_active_samples_of_its_gpus():
    reads = itertools.count()
    read_count = [0]

    def read() -> Inventory:
        read_count[0] = next(reads) + 1
        return Inventory("570", "12.8", (_gpu(0, float(read_count[0])), _gpu(1, 50.0)))

    with BackgroundSampler(read, [0], interval_s=0.005) as sampler:
        _wait_for(lambda: read_count[0] >= 3)
        assert sampler.samples == []  # not active yet: read, not kept
        sampler.active = True
        _wait_for(lambda: sampler.samples)
    assert {s.gpu for s in sampler.samples} == {0} and sampler.error is None
    assert not sampler._thread.is_alive()  # leaving the context stops the thread


def test_background_sampler_stops_quietly_when_reading_fails():
    def read() -> Inventory:
        raise RuntimeError("no NVML")

    with BackgroundSampler(read, [0], interval_s=0.01) as sampler:
        sampler._thread.join(5)
    assert isinstance(sampler.error, RuntimeError) and sampler.samples == []


def test_background_sampler_without_gpus_starts_no_thread():
    with BackgroundSampler(lambda: Inventory("570", "12.8"), [], interval_s=0.01) as sampler:
        assert not sampler._thread.is_alive()


def test_uneven_usage_is_one_definition_flagged_just_past_its_threshold():
    """gpudiag monitor and the scaling report share `lagging`: a gap of exactly IMBALANCE_POINTS is
    even, half a point more is not, in both."""
    from diagnostics.monitor import IMBALANCE_POINTS, lagging
    from reports.analysis import utilization_summary

    at, past = 90.0 - IMBALANCE_POINTS, 89.5 - IMBALANCE_POINTS
    assert lagging({0: 90.0, 1: at}) == [] and lagging({0: 90.0, 1: past}) == [1]
    assert imbalance(samples({0: [90.0], 1: [at]}), [0, 1]) is None
    assert "GPU 1" in (imbalance(samples({0: [90.0], 1: [past]}), [0, 1]) or "")
    report_at = utilization_summary({"0": [90.0], "1": [at]})
    report_past = utilization_summary({"0": [90.0], "1": [past]})
    assert report_at is not None and report_at["imbalanced"] is False
    assert report_past is not None and report_past["lagging_gpus"] == ["1"]


# -- clocks, throttling and the per-GPU readings, replayed from a recorded throttling machine ----------

HOT = (
    "inv-v3-hot-throttling-clocks.json"  # GPU 1: 91 °C, hw_thermal_slowdown + sw_power_cap, 1125 of 1410 MHz
)


def test_a_sample_carries_the_sm_clock_reasons_and_link_of_the_inventory(fixture_path):
    recorded = load_inventory(fixture_path(HOT))
    by_gpu = {s.gpu: s for s in samples_from(recorded, 0.0)}
    for gpu in recorded.gpus:
        sample = by_gpu[gpu.index]
        assert (sample.sm_clock_mhz, sample.sm_clock_max_mhz) == (gpu.sm_clock_mhz, gpu.sm_clock_max_mhz)
        assert sample.clocks_event_reasons == gpu.clocks_event_reasons and sample.pcie == gpu.pcie
    assert throttling(by_gpu[1].clocks_event_reasons) == ["power cap", "thermal slowdown"]
    assert throttling(by_gpu[0].clocks_event_reasons) == []
    assert "thermal slowdown" in format_row(by_gpu[1]) and "1125" in format_row(by_gpu[1])


def test_throttling_is_heat_power_and_hardware_not_idle_or_application_clocks():
    assert throttling(["gpu_idle", "applications_clocks_setting", "sync_boost"]) == []
    assert throttling(["hw_thermal_slowdown", "sw_thermal_slowdown"]) == ["thermal slowdown"]
    assert throttling(["hw_slowdown", "hw_power_brake_slowdown", "gpu_idle"]) == [
        "hardware slowdown",
        "power brake",
    ]
    assert throttling(None) == [] and set(THROTTLE_REASONS) >= {"sw_power_cap", "hw_slowdown"}


def test_the_csv_has_the_clock_columns_and_the_reasons(fixture_path):
    rows = samples_from(load_inventory(fixture_path(HOT)), 1.5)
    buffer = io.StringIO()
    write_csv(buffer, rows)
    parsed = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert list(parsed[0]) == list(CSV_FIELDS)
    hot = next(r for r in parsed if r["gpu"] == "1")
    assert hot["sm_clock_mhz"] == "1125" and hot["sm_clock_max_mhz"] == "1410"
    assert set(hot["clocks_event_reasons"].split(";")) == {"hw_thermal_slowdown", "sw_power_cap"}


def _replayed(fixture_path, changes: list[dict[int, dict[str, Any]]]) -> list[Sample]:
    """One sample per GPU per read of the recorded machine, each read changed as `changes` say."""
    recorded = load_inventory(fixture_path(HOT))
    rows: list[Sample] = []
    for t, change in enumerate(changes):
        gpus = tuple(dataclasses.replace(g, **change.get(g.index, {})) for g in recorded.gpus)
        rows += samples_from(dataclasses.replace(recorded, gpus=gpus), float(t))
    return rows


def test_readings_sum_up_clocks_reasons_heat_and_the_fastest_link(fixture_path):
    clocks, temps = [1410, 1125, 1100, 1300], [80.0, 91.0, 93.0, 85.0]
    reasons = [(), ("hw_thermal_slowdown",), ("sw_power_cap", "hw_thermal_slowdown"), ("gpu_idle",)]
    link = [Pcie(3, 4, 8, 16), Pcie(4, 4, 8, 16), Pcie(3, 4, 8, 16), Pcie(3, 4, 8, 16)]
    changes = [
        {
            1: {
                "sm_clock_mhz": c,
                "temperature_c": t,
                "clocks_event_reasons": r,
                "pcie": p,
                "memory_used_mib": m,
            }
        }
        for c, t, r, p, m in zip(clocks, temps, reasons, link, [100, 900, 400, 300], strict=True)
    ]
    found = readings(_replayed(fixture_path, changes), [1, 5])
    assert set(found) == {1}  # GPU 5 has no samples
    hot = found[1]
    assert hot.samples == 4 and hot.throttled_samples == 2  # gpu_idle is not throttling
    assert hot.sm_clock_mhz_median == statistics.median(clocks) and hot.sm_clock_mhz_min == min(clocks)
    assert hot.sm_clock_max_mhz == 1410 and hot.temperature_c_max == max(temps)
    assert hot.clocks_event_reasons == ("gpu_idle", "hw_thermal_slowdown", "sw_power_cap")
    assert hot.memory_used_mib_max == 900
    assert hot.pcie == Pcie(4, 4, 8, 16) and slow_link(hot.pcie) == "Gen4 x8, below its Gen4 x16"


def test_the_least_busy_gpu_is_named_with_its_own_cause_or_another_s_throttling(fixture_path):
    quiet = {"clocks_event_reasons": (), "pcie": Pcie(4, 4, 16, 16), "display_active": False}
    even = {0: {**quiet, "utilization_gpu_pct": 95.0}, 1: {**quiet, "utilization_gpu_pct": 90.0}}
    assert least_busy_of(readings(_replayed(fixture_path, [even] * 3), [0, 1])) is None
    shown = {**even, 1: {**quiet, "utilization_gpu_pct": 40.0, "display_active": True}}
    named = least_busy_of(readings(_replayed(fixture_path, [shown] * 3), [0, 1]))
    assert named is not None and (named.gpu, named.busiest_gpu) == (1, 0)
    assert named.causes == ("it drives a display",)
    # GPU 1 idles with nothing wrong of its own; GPU 0 is throttled: the one all wait for
    hot = {0: {**quiet, "utilization_gpu_pct": 95.0, "clocks_event_reasons": ("hw_slowdown",)}}
    idle = {**hot, 1: {**quiet, "utilization_gpu_pct": 40.0}}
    named = least_busy_of(readings(_replayed(fixture_path, [idle] * 3), [0, 1]))
    assert (
        named is not None and named.gpu == 1 and "GPU 0 was throttled (hardware slowdown)" in named.causes[0]
    )

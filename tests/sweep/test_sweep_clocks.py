"""What the sweep records of each training case's GPUs while it is measured (bench/sweep.py
`gpu_clocks`, a pure function of the sampler's samples): SM clock, clock event reasons, heat and
power per GPU, replayed from a recorded throttling machine; the row keeps them through results.json
and the report reads them back as throttling. No TensorFlow."""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sweep

from diagnostics.inventory import load_inventory
from diagnostics.monitor import samples_from
from reports.codec import to_json
from reports.results import SCHEMA, TrainRow, validate
from reports.throttling import describe, throttled_gpus


def _rounds(fixture_path, clocks: list[int], reasons: list[tuple[str, ...]], watts: list[float]):
    """Samples of the recorded machine, GPU 1's clock, reasons and power changing read by read."""
    recorded = load_inventory(fixture_path("inv-v3-hot-throttling-clocks.json"))
    rows = []
    for t, (clock, why, power) in enumerate(zip(clocks, reasons, watts, strict=True)):
        gpus = tuple(
            dataclasses.replace(g, sm_clock_mhz=clock, clocks_event_reasons=why, power_draw_w=power)
            if g.index == 1
            else g
            for g in recorded.gpus
        )
        rows += samples_from(dataclasses.replace(recorded, gpus=gpus), float(t))
    return recorded, rows


def test_each_watched_gpu_s_clocks_reasons_heat_and_power(fixture_path):
    clocks, watts = [1410, 1200, 1125, 1350, 1300], [250.0, 300.0, 300.0, 280.0, 270.0]
    reasons = [(), ("sw_power_cap",), ("hw_thermal_slowdown", "sw_power_cap"), (), ("gpu_idle",)]
    recorded, rows = _rounds(fixture_path, clocks, reasons, watts)
    found = sweep.gpu_clocks(rows, [0, 1])
    assert found is not None and [g.gpu for g in found.gpus] == [0, 1]
    cool, hot = found.gpus
    assert hot.samples == len(clocks) and hot.throttled_samples == 2
    assert hot.clocks_event_reasons == ["gpu_idle", "hw_thermal_slowdown", "sw_power_cap"]
    assert hot.sm_clock_mhz_median == statistics.median(clocks) and hot.sm_clock_mhz_min == min(clocks)
    assert hot.sm_clock_max_mhz == recorded.gpus[1].sm_clock_max_mhz
    assert hot.temperature_c_max == recorded.gpus[1].temperature_c
    assert hot.power_w_mean == statistics.fmean(watts)
    assert cool.clocks_event_reasons == [] and cool.throttled_samples == 0
    assert sweep.gpu_clocks(rows, [3]) is None and sweep.gpu_clocks([], []) is None  # nothing sampled


def test_the_row_keeps_them_through_results_json_and_the_report_reads_throttling(fixture_path):
    _, rows = _rounds(fixture_path, [1125, 1100], [("hw_thermal_slowdown",), ()], [300.0, 290.0])
    row = TrainRow(
        gpus=2, round_seconds=[0.5], batch_per_gpu=8, global_batch=16, steps=4,
        clocks=sweep.gpu_clocks(rows, [0, 1]),
    )  # fmt: skip
    (back,) = validate({"schema": SCHEMA, "train": [to_json(row)]}).train
    assert back.clocks == row.clocks
    assert [g.gpu for g in throttled_gpus(back)] == [1]
    text = describe(back)
    assert text is not None and text.startswith("GPU 1 held back by thermal slowdown (1 of 2 samples")
    quiet = sweep.gpu_clocks([s for s in rows if s.gpu == 0], [0, 1])  # the cool GPU alone
    assert describe(dataclasses.replace(row, clocks=quiet)) is None

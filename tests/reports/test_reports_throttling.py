"""A training case measured while a GPU was throttled (TrainRow.clocks): its efficiency is marked in
the throughput table with a footnote naming the GPU and the reason, and a low efficiency there is
blamed on the throttling, not on scaling; hand-made results."""

from __future__ import annotations

from typing import Any

from reports import markdown
from reports.figures import report_figures
from reports.results import SCHEMA, validate

ROUNDS = 6


def train_row(gpus: int, rate: float, **more: Any) -> dict[str, Any]:
    return {
        "gpus": gpus,
        "batch_per_gpu": 32,
        "global_batch": gpus * 32,
        "steps": 10,
        "round_seconds": [gpus * 32 * 10 / rate] * ROUNDS,
        **more,
    }


def clocks(reasons: dict[int, list[str]], throttled: int = 12) -> dict[str, Any]:
    """GPU i's record: 40 samples, `throttled` of them throttled where it has a throttling reason."""
    return {
        "gpus": [
            {
                "gpu": gpu,
                "samples": 40,
                "clocks_event_reasons": why,
                "throttled_samples": throttled if any(r != "gpu_idle" for r in why) else 0,
                "sm_clock_mhz_median": 1125.0,
                "sm_clock_mhz_min": 1080,
                "sm_clock_max_mhz": 1410,
                "temperature_c_max": 91.0,
                "power_w_mean": 290.0,
            }
            for gpu, why in reasons.items()
        ]
    }


def results(four_gpu_clocks: dict[str, Any] | None) -> dict[str, Any]:
    """1, 2, 4 GPUs at 1000, 1800, 2400 samples/s: 90% and 60% efficiency; the pipeline has headroom."""
    four = train_row(4, 2400, **({"clocks": four_gpu_clocks} if four_gpu_clocks else {}))
    return {
        "schema": SCHEMA,
        "device_kind": "gpu",
        "model": "cnn",
        "gpu_counts": [1, 2, 4],
        "batch_sizes": [32],
        "method": {"steps_per_round": 10, "rounds": ROUNDS, "warmup_steps": 5},
        "train": [train_row(1, 1000), train_row(2, 1800, clocks=clocks({0: [], 1: []})), four],
    }


def _bottleneck(data: dict[str, Any]) -> tuple[str | None, str]:
    (rec,) = [r for r in report_figures(validate(data)).recommendations if r.kind == "bottleneck"]
    assert rec.gpus == 4
    return rec.bottleneck, rec.text


def test_low_efficiency_at_a_throttled_point_is_blamed_on_throttling_not_scaling():
    assert _bottleneck(results(None))[0] == "compute"
    kind, text = _bottleneck(results(clocks({0: [], 3: ["hw_thermal_slowdown", "sw_power_cap"]})))
    assert kind == "throttling" and "efficiency 60%" in text
    assert (
        "GPU 3 held back by power cap, thermal slowdown (12 of 40 samples" in text
        and "1125 of 1410 MHz" in text
    )
    assert "GPU 0" not in text


def test_idle_or_application_clock_reasons_are_not_throttling():
    quiet = clocks({0: ["gpu_idle"], 3: ["applications_clocks_setting"]})
    assert _bottleneck(results(quiet))[0] == "compute"
    data = validate(results(quiet))
    assert "†" not in markdown.render(data, report_figures(data), [])


def test_the_throughput_table_marks_the_throttled_case_with_a_footnote():
    data = validate(results(clocks({3: ["hw_slowdown"]})))
    text = markdown.render(data, report_figures(data), [])
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    four, two = (next(r for r in rows if r.startswith(f"| {n} ")) for n in (4, 2))
    assert "60% †1" in four and "†" not in two
    (note,) = [line for line in lines if line.startswith("- †1 ")]
    assert (
        "4 GPU(s) at 32 per GPU" in note
        and "GPU 3 held back by hardware slowdown" in note
        and "91 °C max" in note
    )
    assert "not how the work scales" in note
    # the verdict table repeats the mark: a throttled GPU's slow steps read there as compute
    verdicts = lines[lines.index("### Where the step time goes") :]
    four_verdict = next(r for r in verdicts if r.startswith("| 4 "))
    assert "†1" in four_verdict and not any("†" in r for r in verdicts if r.startswith("| 2 "))


def test_a_file_without_clocks_renders_without_marks_and_writes_none_back():
    data = validate(results(None))
    assert "†" not in markdown.render(data, report_figures(data), [])
    assert "clocks" not in data.to_json()["train"][0] and data.to_json()["train"][1]["clocks"]["gpus"]

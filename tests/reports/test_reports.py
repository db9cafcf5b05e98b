"""reports: figures, recommendations, markdown, plots and re-rendering, from hand-made results."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reports import analysis, markdown, plots, recommend
from reports.figures import report_figures
from reports.results import SCHEMA, ResultsError, failure_summary, format_bytes, load, validate
from reports.write import ReportDirError, check_report_dir, write_report

ROOT = Path(__file__).resolve().parents[2]
A100 = "NVIDIA A100-SXM4-80GB"  # datasheet: 19.5 TFLOP/s FP32, NVLink 600 GB/s (both directions)
ROUNDS = 6


def train_row(gpus: int, batch: int, rate: float, **extra: Any) -> dict[str, Any]:
    """A row whose every round runs at exactly `rate` samples/s (10 steps per round)."""
    seconds = gpus * batch * 10 / rate
    return {
        "gpus": gpus,
        "batch_per_gpu": batch,
        "global_batch": gpus * batch,
        "steps": 10,
        "round_seconds": [seconds] * ROUNDS,
        **extra,
    }


def input_row(gpus: int, batch: int, rate: float) -> dict[str, Any]:
    return {
        "gpus": gpus,
        "batch_per_gpu": batch,
        "global_batch": gpus * batch,
        "steps": 10,
        "round_seconds": [gpus * batch * 10 / rate] * ROUNDS,
    }


def allreduce_row(gpus: int, nbytes: int, seconds: float) -> dict[str, Any]:
    """One all-reduce of `nbytes` per round, each taking `seconds`."""
    return {"gpus": gpus, "bytes": nbytes, "iters": 1, "round_seconds": [seconds] * ROUNDS}


def results(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": SCHEMA,
        "device_kind": "cpu",
        "model": "cnn",
        "scaling": "weak",
        "gpu_counts": [1, 2, 4],
        "batch_sizes": [32],
        "method": {
            "steps_per_round": 10,
            "rounds": ROUNDS,
            "warmup_steps": 5,
            "allreduce_iters": 20,
            "allreduce_bytes_per_round": 2**30,
            "seed": 42,
        },
        "environment": {"tensorflow": "2.21.0", "keras": "3.15.1", "cpu": "test CPU, 2 logical cores"},
        "harness": {  # every field the sweep writes
            "wall_seconds": 100.0,
            "benchmark_seconds": 70.0,
            "worker_start_seconds": 10.0,
            "prepare_seconds": 12.0,
            "close_seconds": 1.0,
            "case_seconds": 95.0,
            "startup_seconds": 4.0,
            "fraction": 0.7,
            "wall_measured_from": "process start",
            "other_tests_seconds": 0.0,
        },
        "train": [train_row(1, 32, 1000), train_row(2, 32, 1800), train_row(4, 32, 2400)],
        "input": [input_row(1, 32, 50_000), input_row(2, 32, 50_000), input_row(4, 32, 50_000)],
        "allreduce": [],
        "failures": [],
    }
    base.update(overrides)
    return base


def gpu_results() -> dict[str, Any]:
    names = {n: [A100] * n for n in (1, 2, 4)}
    return results(
        device_kind="gpu",
        environment={"selected_gpu_names": [A100] * 4, "driver_version": "570.86.15"},
        train=[
            train_row(n, 32, rate, flops_per_sample=1e9, gpu_names=names[n], gradient_bytes=100 * 2**20)
            for n, rate in ((1, 1000), (2, 1800), (4, 3600))
        ],
        allreduce=[
            {"gpus": 4, "bytes": 2**30, "iters": 1, "round_seconds": [0.01] * ROUNDS, "gpu_names": names[4]}
        ],
    )


def test_weak_series_has_speedup_and_efficiency():
    figures = analysis.analyse(validate(results()))
    (series,) = figures.series
    assert [p.speedup for p in series.points] == pytest.approx([1.0, 1.8, 2.4])
    assert [p.efficiency for p in series.points] == pytest.approx([1.0, 0.9, 0.6])
    assert [p.ideal_samples_per_sec for p in series.points] == pytest.approx([1000, 2000, 4000])
    row = figures.train[1]
    assert row.samples_per_sec.median == pytest.approx(1800)
    assert row.samples_per_sec_per_gpu == pytest.approx(900)
    assert row.samples_per_sec.ci_method == "median (order statistics)"


def test_strong_series_keeps_the_global_batch():
    data = results(
        scaling="strong", train=[train_row(1, 32, 1000), train_row(2, 16, 1500), train_row(4, 8, 2000)]
    )
    (series,) = analysis.analyse(validate(data)).series
    assert series.label == "global batch 32"
    assert [(p.gpus, p.batch_per_gpu) for p in series.points] == [(1, 32), (2, 16), (4, 8)]
    assert [p.efficiency for p in series.points] == pytest.approx([1.0, 0.75, 0.5])


def test_missing_baseline_gives_no_efficiency():
    data = results(train=[train_row(2, 32, 1800)])
    (series,) = analysis.analyse(validate(data)).series
    assert all(p.efficiency is None for p in series.points)


def test_allreduce_bandwidth_and_fraction_of_the_link():
    """1 GiB in 10 ms on 4 A100s: algbw 107.37, busbw 161.06 GB/s = 53.7% of 300 GB/s per direction."""
    (row,) = analysis.analyse(validate(gpu_results())).allreduce
    assert row.algbw_gbps == pytest.approx(107.3741824)
    assert row.busbw_gbps.median == pytest.approx(161.0612736)
    assert row.link_gbps_per_direction == 300
    assert row.fraction_of_link == pytest.approx(161.0612736 / 300)
    assert row.time_us.median == pytest.approx(10_000)


def test_fraction_of_peak_compute_from_flops_per_sample():
    """1 GFLOP per sample x 1000 samples/s = 1 TFLOP/s, of 19.5 on one A100 and 78 on four."""
    rows = analysis.analyse(validate(gpu_results())).train
    assert rows[0].achieved_tflops == pytest.approx(1.0)
    assert rows[0].fraction_of_peak == pytest.approx(1 / 19.5)
    assert rows[2].fraction_of_peak == pytest.approx(3.6 / 78)


def test_no_peak_for_cpu_devices():
    rows = analysis.analyse(validate(results())).train
    assert all(r.fraction_of_peak is None for r in rows)


def test_input_headroom_is_pipeline_rate_over_training_rate():
    rows = analysis.analyse(validate(results())).input
    assert [r.headroom for r in rows] == pytest.approx([50, 50 / 1.8, 50 / 2.4])


def test_allreduce_time_is_interpolated_on_a_log_scale():
    measured = [allreduce_row(2, 2**20, 100e-6), allreduce_row(2, 2**22, 400e-6)]
    rows = analysis.allreduce_rows(validate(results(allreduce=measured)))
    assert analysis.allreduce_seconds(rows, 2, 2**21) == pytest.approx(200e-6)
    assert analysis.allreduce_seconds(rows, 2, 2**10) == pytest.approx(100e-6)
    assert analysis.allreduce_seconds(rows, 2, 2**23) == pytest.approx(800e-6)
    assert analysis.allreduce_seconds(rows, 4, 2**20) is None


def _bottlenecks(data: dict[str, Any]) -> dict[int, str]:
    recs = report_figures(validate(data)).recommendations
    return {r.gpus: r.bottleneck for r in recs if r.kind == "bottleneck"}


def test_best_batch_per_count():
    data = results(
        batch_sizes=[32, 64], train=[*results()["train"], train_row(1, 64, 1200), train_row(2, 64, 1700)]
    )
    best = [r for r in report_figures(validate(data)).recommendations if r.kind == "best-batch"]
    assert [(r.gpus, r.batch_per_gpu) for r in best] == [(1, 64), (2, 32), (4, 32)]


def test_input_bound_when_the_pipeline_has_no_headroom():
    data = results(input=[input_row(4, 32, 3000)])  # 3000 / 2400 = 1.25x < 1.5x
    assert _bottlenecks(data) == {4: "input"}


def test_allreduce_bound_when_gradients_take_the_lost_time():
    """4 GPUs at 2000 samples/s: 64 ms steps against 32 ms ideal. The only all-reduce measured (1 GiB
    in 1 s) bounds the 8 MiB of gradients at up to 1 s per step: far more than half the lost time."""
    data = gpu_results()
    data["train"][2] = train_row(
        4, 32, 2000, flops_per_sample=1e9, gpu_names=[A100] * 4, gradient_bytes=8 * 2**20
    )
    data["allreduce"][0]["round_seconds"] = [1.0] * ROUNDS
    assert _bottlenecks(data) == {4: "allreduce"}


def test_compute_bound_otherwise_and_cpu_devices_say_why():
    data = results()
    recs = [r for r in report_figures(validate(data)).recommendations if r.kind == "bottleneck"]
    assert [(r.gpus, r.bottleneck) for r in recs] == [(4, "compute")]
    assert "share the same cores" in recs[0].text
    assert "efficiency 60%" in recs[0].text


def test_oom_is_recommended_with_the_largest_batch_that_fit():
    data = results(
        failures=[
            {
                "benchmark": "train",
                "gpus": 4,
                "batch_per_gpu": 256,
                "error": "oom",
                "message": "OOM",
                "summary": "OOM at 256 per GPU on 4 GPUs",
            }
        ]
    )
    texts = [r.text for r in report_figures(validate(data)).recommendations if r.kind == "failure"]
    assert texts == ["4 CPU devices: out of memory at 256 per CPU device; the largest that fit was 32"]


def test_utilisation_imbalance_is_flagged():
    summary = analysis.utilization_of({"0": [95, 97], "1": [60, 62]})
    assert summary is not None and summary.imbalanced and summary.lagging_gpus == ["1"]
    even = analysis.utilization_of({"0": [95], "1": [90]})
    assert even is not None and not even.imbalanced
    assert analysis.utilization_of(None) is None
    data = gpu_results()
    data["train"][1]["utilization"] = {"0": [95.0], "1": [50.0]}
    kinds = [r.kind for r in report_figures(validate(data)).recommendations]
    assert "imbalance" in kinds


def test_failure_summaries_read_like_the_issue():
    assert failure_summary("train", 2, "oom", 256) == "OOM at 256 per GPU on 2 GPUs"
    assert failure_summary("train", 1, "crash", 64, unit="CPU device") == (
        "worker crashed at 64 per CPU device on 1 CPU device"
    )
    assert failure_summary("allreduce", 4, "timeout", nbytes=2**20) == (
        "worker hung (killed) at 1 MiB all-reduce on 4 GPUs"
    )
    assert (
        format_bytes(1024) == "1 KiB" and format_bytes(3 * 2**19) == "1.5 MiB" and format_bytes(10) == "10 B"
    )


def test_title_says_cpu_or_names_the_gpus():
    assert analysis.title(validate(results())).startswith("Scaling report: cnn on CPU logical devices")
    assert analysis.title(validate(gpu_results())) == f"Scaling report: cnn on up to 4 x {A100}"


def test_markdown_has_every_section_and_the_method():
    data = gpu_results()
    data["failures"] = [
        {
            "benchmark": "train",
            "gpus": 4,
            "batch_per_gpu": 256,
            "error": "oom",
            "message": "OOM when allocating",
            "summary": "OOM at 256 per GPU on 4 GPUs",
        }
    ]
    figures = report_figures(validate(data))
    text = markdown.render(validate(data), figures, ["throughput.png"])
    for heading in (
        "## Training throughput",
        "### Weak scaling",
        "### Fraction of peak compute",
        "## All-reduce",
        "## Input pipeline",
        "## Failed configurations",
        "## Recommendations",
        "## Plots",
        "## Environment",
        "## How these numbers were measured",
    ):
        assert heading in text, heading
    assert "| 1,800 " in text and "90%" in text  # 2 GPUs: 1800 samples/s, efficiency 90%
    assert "161.061" in text and "53.7%" in text  # busbw and fraction of the link
    assert "OOM at 256 per GPU on 4 GPUs" in text
    assert "70% of the sweep's 100.0 s" in text
    assert "![Throughput against device count" in text


def test_plots_are_png_and_skipped_when_empty():
    figures = analysis.analyse(validate(gpu_results()))
    pngs = plots.render_all(figures)
    assert set(pngs) == {"throughput.png", "efficiency.png", "allreduce.png"}
    assert all(p.startswith(plots.PNG_SIGNATURE) for p in pngs.values())
    one_count = analysis.analyse(validate(results(gpu_counts=[1], train=[train_row(1, 32, 1000)], input=[])))
    assert set(plots.render_all(one_count)) == {"throughput.png"}


def test_validate_names_the_problem():
    with pytest.raises(ResultsError, match="schema"):
        validate({"schema": "other"})
    bad = results()
    bad["train"][0]["round_seconds"] = [0.0]
    with pytest.raises(ResultsError, match=r"train\[0\].round_seconds"):
        validate(bad)
    del bad["train"][0]["steps"]
    with pytest.raises(ResultsError, match="no field 'steps'"):
        validate(bad)


def test_report_dir_checks_create_nothing(tmp_path):
    check_report_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportDirError, match="not a folder"):
        check_report_dir(tmp_path / "file")
    with pytest.raises(ReportDirError, match="not writable"):
        check_report_dir(tmp_path / "file" / "sub")


def test_write_then_rerender_from_saved_json_gives_the_same_report(tmp_path):
    first = tmp_path / "first"
    written = write_report(gpu_results(), first)
    assert {p.name for p in written} == {
        "scaling.md",
        "scaling.json",
        "results.json",
        "throughput.png",
        "efficiency.png",
        "allreduce.png",
    }
    assert not [p for p in first.iterdir() if p.name.startswith(".")]  # no temporary files left
    saved = json.loads((first / "scaling.json").read_text())
    assert saved["figures"]["series"][0]["points"][1]["efficiency"] == pytest.approx(0.9)
    assert saved["results"]["train"][0]["round_seconds"] == [0.32] * ROUNDS  # raw times kept
    second = tmp_path / "second"
    for source in ("results.json", "scaling.json"):
        proc = subprocess.run(
            [sys.executable, "-m", "reports", str(first / source), "--out", str(second)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert (second / "scaling.md").read_text() == (first / "scaling.md").read_text()
        assert json.loads((second / "scaling.json").read_text())["figures"] == saved["figures"]
    assert load(second / "results.json") == load(first / "results.json")


def test_rerender_of_a_bad_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    proc = subprocess.run(
        [sys.executable, "-m", "reports", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not JSON" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_report_figures_are_the_measurements_and_the_recommendations_argued_from_them():
    data = gpu_results()
    figures = report_figures(validate(data))
    measured = analysis.analyse(validate(data))
    assert measured.recommendations == []
    assert dataclasses.replace(figures, recommendations=[]) == measured
    assert figures.recommendations == recommend.recommend(validate(data), measured)


def test_the_report_shows_the_harness_timing_it_is_given(tmp_path):
    data = gpu_results()
    harness = {**data["harness"], "fraction": 0.42, "wall_seconds": 12.5}
    write_report({**data, "harness": harness}, tmp_path)
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["results"]["harness"] == harness == saved["figures"]["harness"]
    assert "42% of the sweep's 12.5 s" in (tmp_path / "scaling.md").read_text()


def test_recommendation_thresholds_are_the_issue_s():
    assert recommend.EFFICIENCY_TARGET == 0.8

"""The report's verdict per training case (the trainer's rule, common.bottleneck, from the sweep's
own rows) and, with --data, the data beside its synthetic companion ("input costs X% at N GPUs"),
kept out of every other figure; hand-made results."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from common.bottleneck import INPUT_BOUND_HEADROOM, REMEDIES
from reports import compare, markdown, merge
from reports.figures import report_figures
from reports.results import SCHEMA, ResultsError, validate

SPREAD = (0.98, 0.99, 1.0, 1.0, 1.01, 1.02)  # 6 rounds: the median's interval is [min, max]
GRADIENTS = 2**20


def rounds(samples: int, rate: float) -> list[float]:
    """Six rounds of `samples` whose median rate is `rate` samples/s."""
    return [samples / (rate * f) for f in SPREAD]


def train_row(gpus: int, rate: float, **more: Any) -> dict[str, Any]:
    return {
        "gpus": gpus,
        "batch_per_gpu": 32,
        "global_batch": gpus * 32,
        "steps": 10,
        "round_seconds": rounds(gpus * 320, rate),
        "gradient_bytes": GRADIENTS,
        **more,
    }


def input_row(gpus: int, rate: float) -> dict[str, Any]:
    return {k: v for k, v in train_row(gpus, rate).items() if k != "gradient_bytes"}


def allreduce_row(gpus: int, seconds: float) -> dict[str, Any]:
    """One all-reduce of the gradients' size per round, each taking `seconds`."""
    return {"gpus": gpus, "bytes": GRADIENTS, "iters": 1, "round_seconds": [seconds] * 6}


def results(**overrides: Any) -> dict[str, Any]:
    """1 and 2 CPU devices at 32 per device: 1 device 1,000 samples/s fed at 10,000; 2 devices
    1,600 samples/s (a step of 40 ms) fed at 1,700 (under 1.2x: input-bound); the all-reduce of the
    gradients 2 ms (5% of the step)."""
    base: dict[str, Any] = {
        "schema": SCHEMA,
        "device_kind": "cpu",
        "model": "cnn",
        "scaling": "weak",
        "gpu_counts": [1, 2],
        "batch_sizes": [32],
        "train": [train_row(1, 1000.0), train_row(2, 1600.0)],
        "input": [input_row(1, 10_000.0), input_row(2, 1700.0)],
        "allreduce": [allreduce_row(2, 0.002)],
    }
    return {**base, **overrides}


def with_data(real: dict[str, Any], synthetic_rate: float) -> dict[str, Any]:
    """`real`, a case on --data, with its companion on synthetic 32x32x3 images inside."""
    return {**real, "synthetic": {**train_row(real["gpus"], synthetic_rate), "input_shape": [32, 32, 3]}}


def test_each_case_gets_the_trainer_s_verdict_from_the_sweep_s_rows():
    figures = report_figures(validate(results()))
    by_gpus = {b.gpus: b for b in figures.bottlenecks}
    assert by_gpus[1].verdict == "compute" and by_gpus[1].shares["communication"] == 0.0
    assert by_gpus[1].input_headroom == pytest.approx(10.0)
    two = by_gpus[2]
    assert two.input_headroom is not None and two.input_headroom < INPUT_BOUND_HEADROOM
    assert two.verdict == "input"
    assert two.shares["input"] == pytest.approx(1600 / 1700, abs=1e-3)
    # the all-reduce is read at the row's gradient size: 2 ms of a 40 ms step
    assert two.allreduce_seconds == pytest.approx(0.002)
    assert two.shares["communication"] == pytest.approx(0.05) and two.shares["compute"] == pytest.approx(0.95)
    assert two.samples_per_sec == pytest.approx(1600.0)


def test_the_verdicts_are_in_scaling_json_s_figures():
    figures = report_figures(validate(results())).to_json()
    assert [(b["gpus"], b["verdict"]) for b in figures["bottlenecks"]] == [(1, "compute"), (2, "input")]
    assert set(figures["bottlenecks"][1]["shares"]) == {"input", "communication", "compute"}
    assert figures["input_costs"] == []


def test_the_verdict_column_sits_beside_the_throughput_with_the_remedy():
    data = validate(results())
    text = markdown.render(data, report_figures(data), [])
    start = text.index("### Where the step time goes")
    section = text[start : text.index("\n## ", start)]
    rows = [line.replace(" ", "") for line in section.splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "|1|32|1,000|**compute**|10%(10.00x)|0%|100%|",
        "|2|32|1,600|**input**|94%(1.06x)|5%|95%|",
    ]
    assert f"- input: {REMEDIES['input']}" in section and f"- compute: {REMEDIES['compute']}" in section
    assert "- balanced:" not in section  # only the remedies of the verdicts shown
    assert text.index("### Weak scaling") < text.index("### Where the step time goes")


def test_a_slow_all_reduce_is_communication_and_a_missing_one_judges_only_the_input():
    slow = report_figures(validate(results(input=[], allreduce=[allreduce_row(2, 0.02)])))
    assert [(b.gpus, b.verdict) for b in slow.bottlenecks] == [(1, "compute"), (2, "communication")]
    assert slow.bottlenecks[1].shares == {"communication": 0.5, "compute": 0.5}
    untimed = report_figures(validate(results(allreduce=[])))
    two = untimed.bottlenecks[1]
    assert two.verdict == "input" and "communication" not in two.shares


def test_with_data_the_report_says_what_the_input_costs():
    data = results(
        data="/data/train-*", train=[with_data(train_row(1, 1000.0), 1600.0), train_row(2, 1600.0)]
    )
    figures = report_figures(validate(data))
    (cost,) = figures.input_costs
    assert (cost.gpus, cost.batch_per_gpu) == (1, 32)
    assert cost.cost == pytest.approx(1 - 1000 / 1600) and cost.apart is True
    text = markdown.render(validate(data), figures, [])
    assert (
        "- Input costs 38% at 1 CPU device (32 per CPU device): 1,000 samples/s on the data against " in text
    )
    assert "1,600 on synthetic 32x32x3 images." in text
    # the same rates apart only by noise: said so
    close = results(data="/data/x.npz", train=[with_data(train_row(1, 1000.0), 1010.0)])
    assert "(within noise: the 95% confidence intervals overlap)" in markdown.render(
        validate(close), report_figures(validate(close)), []
    )


def test_the_synthetic_companion_mixes_into_no_other_figure():
    """Scaling series, efficiency, variants, compare and merge see the data's rows only."""
    plain = validate(results(data="/d.npz"))
    both = validate(results(data="/d.npz", train=[with_data(r, 5000.0) for r in results()["train"]]))
    a, b = report_figures(plain), report_figures(both)
    assert b.input_costs and not a.input_costs
    assert (a.train, a.series, a.bottlenecks, a.variants) == (b.train, b.series, b.bottlenecks, b.variants)
    assert compare.cases(plain).keys() == compare.cases(both).keys()
    assert [c.rates for c in compare.cases(plain).values()] == [c.rates for c in compare.cases(both).values()]
    assert merge.points(plain) == merge.points(both)


def test_a_results_file_with_companions_round_trips_and_checks_them():
    data = results(data="/d.npz", train=[with_data(train_row(1, 1000.0), 1600.0)])
    assert validate(copy.deepcopy(data)).to_json()["train"] == validate(data).to_json()["train"]
    assert validate(data).to_json()["train"][0]["synthetic"]["input_shape"] == [32, 32, 3]
    assert "synthetic" not in validate(results()).to_json()["train"][0]  # omitted where there is none
    del data["train"][0]["synthetic"]["round_seconds"]
    with pytest.raises(ResultsError, match=r"train\[0\]\.synthetic has no field 'round_seconds'"):
        validate(data)


def test_data_without_companions_says_why_none_was_measured():
    data = validate(results(data="/data/features.npz"))
    text = markdown.render(data, report_figures(data), [])
    assert "### The data against synthetic data" in text and "Not measured: no training case" in text
    plain = validate(results())
    assert "against synthetic" not in markdown.render(plain, report_figures(plain), [])

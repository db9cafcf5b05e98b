"""The report's variants: side by side with the speedup over the baseline, the scaling tables kept
to the baseline, and recommendations argued only from measured speedups (hand-made results)."""

from __future__ import annotations

from typing import Any

from reports import markdown
from reports.figures import report_figures
from reports.results import SCHEMA, validate

SPREAD = (0.98, 0.99, 1.0, 1.0, 1.01, 1.02)  # 6 rounds: the median's interval is [min, max]


def figures_json(data: dict[str, Any]) -> dict[str, Any]:
    """The figures as scaling.json has them."""
    return report_figures(validate(data)).to_json()


def train_row(gpus: int, rate: float, **variant: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "gpus": gpus,
        "batch_per_gpu": 32,
        "global_batch": gpus * 32,
        "steps": 10,
        "round_seconds": [gpus * 320 / (rate * f) for f in SPREAD],
    }
    if variant:
        row["variant"] = {
            "jit_compile": False,
            "mixed_precision": False,
            "cross_device_ops": "auto",
            **variant,
        }
    return row


def allreduce_row(ops: str, seconds: float) -> dict[str, Any]:
    return {
        "gpus": 2,
        "bytes": 2**20,
        "iters": 10,
        "round_seconds": [seconds * f for f in SPREAD],
        "variant": {"cross_device_ops": ops},
    }


def results(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": SCHEMA,
        "device_kind": "gpu",
        "model": "cnn",
        "scaling": "weak",
        "gpu_counts": [1, 2],
        "batch_sizes": [32],
        "method": {"steps_per_round": 10, "rounds": 6, "warmup_steps": 2, "seed": 42},
        "environment": {},
        "variants": {
            "axes": {
                "jit_compile": [False, True],
                "mixed_precision": [False, True],
                "cross_device_ops": ["auto", "hierarchical"],
            },
            "baseline": {"jit_compile": False, "mixed_precision": False, "cross_device_ops": "auto"},
            "not_applicable": [
                {
                    "gpus": 1,
                    "variant": {"cross_device_ops": "hierarchical"},
                    "reason": "one device has nothing to all-reduce",
                }
            ],
        },
        "train": [
            train_row(1, 1000),
            train_row(1, 1500, jit_compile=True),  # 1.5x, intervals apart
            train_row(1, 1010, mixed_precision=True),  # +1%: no difference
            train_row(2, 1800),
            train_row(2, 2880, jit_compile=True),  # 1.6x
            train_row(2, 1500, cross_device_ops="hierarchical"),  # 0.83x, slower
        ],
        "input": [],
        "allreduce": [allreduce_row("auto", 0.010), allreduce_row("hierarchical", 0.020)],
        "failures": [
            {
                "benchmark": "train",
                "gpus": 2,
                "batch_per_gpu": 32,
                "error": "oom",
                "variant": {"jit_compile": False, "mixed_precision": True, "cross_device_ops": "auto"},
            },
        ],
    }
    base.update(overrides)
    return base


def test_the_scaling_tables_are_the_baseline_s_alone():
    with_variants = figures_json(results())
    plain = figures_json(results(train=[train_row(1, 1000), train_row(2, 1800)], allreduce=[
        allreduce_row("auto", 0.010)], variants=None, failures=[]))  # fmt: skip
    assert with_variants["train"] == plain["train"] and with_variants["series"] == plain["series"]
    assert with_variants["allreduce"] == plain["allreduce"]
    assert plain["variants"] is None  # one variant: no section
    # the OOM of a variant is in the failures table, not the baseline's batch advice
    assert not [r for r in with_variants["recommendations"] if r["kind"] == "failure"]


def test_variants_side_by_side_with_the_speedup_over_the_baseline():
    v = figures_json(results())["variants"]
    assert v["labels"] == ["default", "XLA", "mixed fp16", "hierarchical all-reduce"]
    one, two = v["train"]
    assert [c["status"] for c in two["cells"]] == ["measured", "measured", "failed", "measured"]
    assert one["cells"][1]["speedup"] == 1.5 and one["cells"][1]["apart"] is True
    assert two["cells"][3]["speedup"] == 1500 / 1800
    assert one["cells"][3]["status"] == "n/a"  # recorded as not applicable on one device
    by_label = {s["label"]: s for s in v["summary"]}
    assert by_label["XLA"]["median_speedup"] == 1.55 and by_label["XLA"]["faster"] == 2
    assert by_label["mixed fp16"]["configurations"] == 1 and by_label["mixed fp16"]["failed"] == 1
    assert by_label["hierarchical all-reduce"]["slower"] == 1
    (ar,) = v["allreduce"]
    assert ar["speedup"] == {"auto": 1.0, "hierarchical": 0.5}


def test_recommendations_come_from_measured_speedups_only():
    texts = [
        r["text"] for r in figures_json(results())["recommendations"] if r["kind"] in ("variant", "note")
    ]
    assert texts[0].startswith(
        "XLA: measured 1.55x the default (no XLA, float32, auto all-reduce, auto steps per call) "
        "(median; 1.50-1.60x"
    )
    assert texts[0].endswith("faster: use it (`python -m training --jit-compile`)")
    assert texts[1].startswith("mixed fp16: measured 1.01x") and "failed in 1" in texts[1]
    assert texts[1].endswith("no clear difference (95% CIs overlap, or within 5%)")
    assert texts[2].startswith("hierarchical all-reduce: measured 0.83x") and texts[2].endswith(
        "slower: keep default (no XLA, float32, auto all-reduce, auto steps per call)"
    )
    assert texts[3] == (
        "--cross-device-ops hierarchical on 1 GPU(s) not measured: one device has nothing to all-reduce"
    )


def test_markdown_puts_the_variants_side_by_side():
    data = validate(results())
    text = markdown.render(data, report_figures(data), [])
    assert "## Variants" in text
    header = next(line for line in text.splitlines() if "(baseline)" in line)
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "GPUs", "batch per GPU", "default (baseline)", "XLA", "mixed fp16", "hierarchical all-reduce",
    ]  # fmt: skip
    row = next(line for line in text.splitlines() if line.startswith("| 2 ") and "failed" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["2", "32", "1,800", "2,880 (1.60x*)", "failed (oom)", "1,500 (0.83x*)"]
    assert "All-reduce bus bandwidth (GB/s, median) per cross-device ops:" in text
    assert "Not applicable on these devices" in text
    assert "- Variants: training ran for every combination of the axes" in text


def test_steps_per_call_is_measured_and_recommended_like_any_axis():
    """A sweep of --steps-per-execution auto 1 20: one step per call slower, 20 faster (the
    trainer's default, auto, is the baseline); old rows without the axis count as auto."""
    axes = {"jit_compile": [False], "mixed_precision": [False], "cross_device_ops": ["auto"],
            "steps_per_execution": ["auto", 1, 20]}  # fmt: skip
    data = results(
        variants={"axes": axes, "baseline": {a: v[0] for a, v in axes.items()}, "not_applicable": []},
        train=[
            train_row(2, 1800),  # no axis written: auto
            train_row(2, 1200, steps_per_execution=1),
            train_row(2, 2400, steps_per_execution=20),
        ],
        allreduce=[],
        failures=[],
    )
    v = figures_json(data)["variants"]
    assert v["labels"] == ["default", "1 step per call", "20 steps per call"]
    assert [c["speedup"] for c in v["train"][0]["cells"]] == [1.0, 1200 / 1800, 2400 / 1800]
    texts = [r["text"] for r in figures_json(data)["recommendations"] if r["kind"] == "variant"]
    assert texts[0].startswith("20 steps per call: measured 1.33x") and texts[0].endswith(
        "faster: use it (`python -m training --steps-per-execution 20`)"
    )
    assert texts[1].startswith("1 step per call: measured 0.67x")
    assert texts[1].endswith("slower: keep default (no XLA, float32, auto all-reduce, auto steps per call)")

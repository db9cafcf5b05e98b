"""scaling.md's sections on where the step time goes, right after the throughput tables: each
training case's verdict and shares (the trainer's rule, common/bottleneck.py), and with --data the
user's data beside synthetic images of the same size ("input costs X% at N GPUs")."""

from __future__ import annotations

from tabulate import tabulate

from common.bottleneck import (
    COMMUNICATION_BOUND_SHARE,
    COMMUNICATION_CLOSE_SHARE,
    INPUT_BOUND_HEADROOM,
    INPUT_CLOSE_HEADROOM,
    REMEDIES,
    SEE,
)
from reports.figure_rows import CaseBottleneck, Figures, InputCost
from reports.results import Results
from reports.throttling import throttled_cases


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def _devices(n: int, unit: str) -> str:
    return f"{n} {unit}{'s' if n != 1 else ''}"


def _row(b: CaseBottleneck, mark: str | None) -> list[str]:
    headroom = f" ({b.input_headroom:.2f}x)" if b.input_headroom is not None else ""
    return [
        str(b.gpus),
        str(b.batch_per_gpu),
        f"{b.samples_per_sec:,.0f}",
        f"**{b.verdict}**" + (f" {mark}" if mark else ""),
        _pct(b.shares.get("input")) + headroom,
        _pct(b.shares.get("communication")),
        _pct(b.shares.get("compute")),
    ]


def verdict_section(figures: Figures, marks: dict[tuple[int, int], str] | None = None) -> list[str]:
    """The verdict and shares of every training case, beside its throughput, with the remedies;
    `marks`: the throughput table's throttling marks by (devices, batch), repeated beside the
    verdict (a throttled GPU's slower steps read as compute here)."""
    if not figures.bottlenecks:
        return []
    unit = figures.unit
    headers = [
        f"{unit}s",
        f"batch per {unit}",
        "samples/s",
        "verdict",
        "input (headroom)",
        "all-reduce",
        "compute",
    ]
    rows = [_row(b, (marks or {}).get((b.gpus, b.batch_per_gpu))) for b in figures.bottlenecks]
    verdicts = sorted({b.verdict for b in figures.bottlenecks})
    return [
        "### Where the step time goes",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        "The trainer's own verdict (`python -m training` ends its summary with the same line), from "
        "this sweep's rows: the input pipeline alone at the same devices and batch (Input pipeline "
        "below), one all-reduce of the model's gradients (the All-reduce table, interpolated to their "
        f"size). **input** when the pipeline runs under {INPUT_BOUND_HEADROOM:g}x the training rate; "
        f"**communication** when the all-reduce takes {COMMUNICATION_BOUND_SHARE:.0%} of a step or "
        f"more; **balanced** when the pipeline is under {INPUT_CLOSE_HEADROOM:g}x or the all-reduce "
        f"{COMMUNICATION_CLOSE_SHARE:.0%} or more (or not measured on several devices); **compute** "
        "otherwise. Shares are of one step: input is what the pipeline needs of it (it runs beside "
        "the step), all-reduce and compute split it.",
        "",
        *[f"- {v}: {REMEDIES[v]}" for v in verdicts],
        f"- more in {SEE}",
        "",
    ]


def _cost_line(c: InputCost, unit: str) -> str:
    real, synthetic = c.real_samples_per_sec.median, c.synthetic_samples_per_sec.median
    shape = "x".join(map(str, c.synthetic_shape)) if c.synthetic_shape else "the same size"
    noise = {
        True: "",
        False: " (within noise: the 95% confidence intervals overlap)",
        None: " (too few rounds for confidence intervals)",
    }[c.apart]
    # a negative cost (the data ran faster) is noise or a warmer cache: nothing measurable
    cost = f"{c.cost:.0%}" if c.cost >= 0 else "nothing measurable"
    return (
        f"- Input costs {cost} at {_devices(c.gpus, unit)} ({c.batch_per_gpu} per {unit}): "
        f"{real:,.0f} samples/s on the data against {synthetic:,.0f} on synthetic {shape} "
        f"images{noise}."
    )


def input_cost_section(results: Results, figures: Figures) -> list[str]:
    """With --data: each baseline case on the data beside the same case on synthetic data."""
    if not results.data:
        return []
    out = ["### The data against synthetic data", ""]
    if not figures.input_costs:
        if not figures.train:
            return []
        return [
            *out,
            "Not measured: no training case on the data has its synthetic companion (the data's "
            "examples are not square RGB images, the only synthetic data the sweep makes, or the "
            "companion failed).",
            "",
        ]
    unit = figures.unit
    headers = [f"{unit}s", f"batch per {unit}", "samples/s on the data", "on synthetic data", "input costs"]
    rows = [
        [
            str(c.gpus),
            str(c.batch_per_gpu),
            f"{c.real_samples_per_sec.median:,.0f}",
            f"{c.synthetic_samples_per_sec.median:,.0f}",
            f"{c.cost:.0%}",
        ]
        for c in figures.input_costs
    ]
    return [
        *out,
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        "",
        *[_cost_line(c, unit) for c in figures.input_costs],
        "",
        f"Each training case of the baseline variant ran twice: on {results.data} and, right after "
        "it in the same worker, on synthetic images of the same size held in memory. Input costs = "
        "1 - (samples/s on the data) / (samples/s on synthetic data): what reading, decoding and "
        "feeding the data takes from training.",
        "",
    ]


def bottleneck_sections(results: Results, figures: Figures) -> list[str]:
    marks = {(c.gpus, c.batch_per_gpu): c.mark for c in throttled_cases(results)}
    return verdict_section(figures, marks) + input_cost_section(results, figures)

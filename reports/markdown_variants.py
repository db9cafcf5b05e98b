"""scaling.md's Variants section: the variants side by side (reports.variant_figures), rendered
as the rest of the report is (reports.markdown)."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from reports.figure_rows import Figures, VariantCell, VariantFigures
from reports.variants import AXIS_FLAGS, flag_value


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _flags(variant: dict[str, Any]) -> str:
    return ", ".join(f"{AXIS_FLAGS[axis]} {flag_value(value)}" for axis, value in variant.items())


def _variant_cell(cell: VariantCell, is_baseline: bool) -> str:
    if cell.status != "measured" or cell.samples_per_sec is None:
        return cell.status + (f" ({cell.error})" if cell.error else "")
    text = _num(cell.samples_per_sec.median)
    if cell.speedup is not None and not is_baseline:
        text += f" ({cell.speedup:.2f}x{'*' if cell.apart else ''})"
    return text


def _train_table(v: VariantFigures, unit: str) -> list[str]:
    if not v.train:
        return []
    labels = [f"{lbl} (baseline)" if i == 0 else lbl for i, lbl in enumerate(v.labels)]
    rows = [
        [r.gpus, r.batch_per_gpu, *(_variant_cell(c, i == 0) for i, c in enumerate(r.cells))] for r in v.train
    ]
    return [
        _table([f"{unit}s", f"batch per {unit}", *labels], rows),
        "",
        "Training samples/s (median over rounds) and, in brackets, the speedup over the baseline "
        "in the same configuration; * marks a speedup whose 95% confidence intervals do not overlap "
        "the baseline's.",
        "",
    ]


def _summary_table(v: VariantFigures) -> list[str]:
    if not v.summary:
        return []
    rows = [
        [
            s.label,
            s.configurations,
            _num(s.median_speedup, ".2f"),
            "n/a" if s.min_speedup is None else f"{s.min_speedup:.2f}-{s.max_speedup:.2f}",
            s.faster,
            s.slower,
            s.failed,
        ]
        for s in v.summary
    ]
    headers = ["variant", "configurations", "median speedup", "range", "faster*", "slower*", "failed"]
    return [_table(headers, rows), ""]


def _allreduce_table(v: VariantFigures, unit: str) -> list[str]:
    all_ops = sorted({ops for r in v.allreduce for ops in r.busbw_gbps})
    if len(all_ops) <= 1:
        return []
    rows = [[r.gpus, r.size, *(_num(r.busbw_gbps.get(ops), ".3f") for ops in all_ops)] for r in v.allreduce]
    return [
        "All-reduce bus bandwidth (GB/s, median) per cross-device ops:",
        "",
        _table([f"{unit}s", "size", *all_ops], rows),
        "",
    ]


def variants_section(figures: Figures) -> list[str]:
    """The variants side by side: samples/s and the speedup over the baseline variant."""
    v = figures.variants
    if not v:
        return []
    unit = figures.unit
    axes = "; ".join(f"{AXIS_FLAGS[k]} {' '.join(map(flag_value, vals))}" for k, vals in v.axes.items())
    out = ["## Variants", "", f"Axes measured: {axes}. Baseline: {v.baseline_label}.", ""]
    out += _train_table(v, unit) + _summary_table(v) + _allreduce_table(v, unit)
    if v.not_applicable:
        out += [
            "Not applicable on these devices (recorded, not run):",
            "",
            *[f"- {na.gpus} {unit}(s), {_flags(na.variant)}: {na.reason}" for na in v.not_applicable],
            "",
        ]
    return out

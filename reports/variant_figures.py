"""The variants side by side: per configuration each variant's rate and its speedup over the
baseline variant (reports.variants.baseline), per variant a summary over the configurations, the
all-reduce per cross-device ops, and the variants these devices could not run.

Pure: typed results in, typed figures out (reports.figure_rows.VariantFigures, scaling.json's
figures["variants"]); None for a sweep of one variant. reports/recommend.py argues its variant advice
from these numbers only.
"""

from __future__ import annotations

import statistics
from typing import Any

from reports import stats
from reports.figure_rows import OpsAllreduce, VariantCell, VariantConfig, VariantFigures, VariantSummary
from reports.results import Failure, NotApplicable, Results, TrainRow, format_bytes
from reports.variants import AXES, baseline, default_values, label, variant_key, variant_of

# a variant is recommended (or advised against) when it moved the rate by more than this, with
# the 95% confidence intervals apart, in most configurations where both ran
MIN_GAIN = 0.05

Config = tuple[int, int | None, Any]  # (devices, batch per device, variant_key)


def _variants(results: Results, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The training variants measured (or failed), the baseline first, then in sweep order."""
    seen = {variant_key(base): base}
    train_failures = [f.variant for f in results.failures if f.benchmark == "train"]
    for given in [*(r.variant for r in results.train), *train_failures]:
        v = variant_of(given)
        seen.setdefault(variant_key(v), v)
    return list(seen.values())


def _cell(
    variant: dict[str, Any], row: TrainRow | None, failed: Failure | None, base_rate: stats.Summary | None
) -> VariantCell:
    if row is None:
        status = "failed" if failed else "not run"
        return VariantCell(
            variant=variant, label=label(variant), status=status, error=failed.error if failed else None
        )
    rate = stats.summarize(row.rates())
    return VariantCell(
        variant=variant,
        label=label(variant),
        status="measured",
        samples_per_sec=rate,
        speedup=rate.median / base_rate.median if base_rate else None,
        apart=stats.intervals_apart(base_rate, rate) if base_rate else None,
    )


def train_table(
    results: Results, variants: list[dict[str, Any]], not_applicable: list[NotApplicable]
) -> list[VariantConfig]:
    rows: dict[Config, TrainRow] = {
        (row.gpus, row.batch_per_gpu, variant_key(variant_of(row.variant))): row for row in results.train
    }
    failed: dict[Config, Failure] = {
        (f.gpus or 0, f.batch_per_gpu, variant_key(variant_of(f.variant))): f
        for f in results.failures
        if f.benchmark == "train"
    }
    configs = sorted(
        {(g, b) for g, b, _ in rows if b is not None} | {(g, b) for g, b, _ in failed if b is not None}
    )
    table = []
    for gpus, batch in configs:
        base_row = rows.get((gpus, batch, variant_key(variants[0])))
        base_rate = stats.summarize(base_row.rates()) if base_row else None
        cells = []
        for v in variants:
            key = (gpus, batch, variant_key(v))
            cell = _cell(v, rows.get(key), failed.get(key), base_rate)
            if cell.status == "not run" and _applies(not_applicable, gpus, v):
                cell.status = "n/a"
            cells.append(cell)
        table.append(VariantConfig(gpus=gpus, batch_per_gpu=batch, cells=cells))
    return table


def _applies(not_applicable: list[NotApplicable], gpus: int, variant: dict[str, Any]) -> bool:
    """True when a recorded not-applicable entry covers this variant on `gpus` devices."""
    return any(
        na.gpus == gpus and all(variant.get(a) == val for a, val in na.variant.items())
        for na in not_applicable
    )


def summaries(table: list[VariantConfig], variants: list[dict[str, Any]]) -> list[VariantSummary]:
    """Per variant other than the baseline: its speedups over the configurations where both ran."""
    out = []
    for i, v in enumerate(variants[1:], start=1):
        cells = [row.cells[i] for row in table if row.cells[0].status == "measured"]
        measured = [c for c in cells if c.status == "measured" and c.speedup is not None]
        speedups = [c.speedup for c in measured if c.speedup is not None]
        out.append(
            VariantSummary(
                variant=v,
                label=label(v),
                configurations=len(measured),
                failed=sum(c.status == "failed" for c in cells),
                median_speedup=statistics.median(speedups) if speedups else None,
                min_speedup=min(speedups, default=None),
                max_speedup=max(speedups, default=None),
                faster=sum(bool(c.apart) and (c.speedup or 0) > 1 + MIN_GAIN for c in measured),
                slower=sum(bool(c.apart) and (c.speedup or 0) < 1 - MIN_GAIN for c in measured),
            )
        )
    return out


def allreduce_table(results: Results, base_ops: str) -> list[OpsAllreduce]:
    """Per (devices, size): each cross-device ops' bus bandwidth and its speedup over the baseline's."""
    by_ops: dict[tuple[int, int], dict[str, stats.Summary]] = {}
    for row in results.allreduce:
        ops = variant_of(row.variant, "allreduce")["cross_device_ops"]
        ranks = row.gpus * (row.workers or 1)
        bus = [stats.busbw(row.bytes * row.iters / s / 1e9, ranks) for s in row.round_seconds]
        by_ops.setdefault((row.gpus, row.bytes), {})[ops] = stats.summarize(bus)
    table = []
    for (n, nbytes), measured in sorted(by_ops.items()):
        base = measured.get(base_ops)
        base = base if base is not None and base.median > 0 else None  # one device: nothing reduced
        table.append(
            OpsAllreduce(
                gpus=n,
                bytes=nbytes,
                size=format_bytes(nbytes),
                busbw_gbps={ops: s.median for ops, s in measured.items()},
                speedup={ops: s.median / base.median for ops, s in measured.items()} if base else {},
                apart={ops: stats.intervals_apart(base, s) for ops, s in measured.items()} if base else {},
            )
        )
    return table


def variant_figures(results: Results) -> VariantFigures | None:
    base = baseline(results)
    variants = _variants(results, base)
    ops_measured = {variant_of(r.variant, "allreduce")["cross_device_ops"] for r in results.allreduce}
    not_applicable = list(results.variants.not_applicable) if results.variants else []
    if len(variants) <= 1 and len(ops_measured) <= 1 and not not_applicable:
        return None
    table = train_table(results, variants, not_applicable)
    axes = results.variants.axes if results.variants and results.variants.axes else None
    return VariantFigures(
        baseline=base,
        baseline_label=label(base) if label(base) != "default" else f"default ({default_values()})",
        axes=axes or {axis: [default] for axis, default in AXES.items()},
        labels=[label(v) for v in variants],
        train=table,
        summary=summaries(table, variants),
        allreduce=allreduce_table(results, base["cross_device_ops"]),
        not_applicable=not_applicable,
    )

"""The variants side by side: per configuration each variant's rate and its speedup over the
baseline variant (reports.variants.baseline), per variant a summary over the configurations, the
all-reduce per cross-device ops, and the variants these devices could not run.

Pure: a results dict in, a JSON-ready dict (scaling.json's figures["variants"]) out; None for a
sweep of one variant. reports/recommend.py argues its variant advice from these numbers only.
"""

from __future__ import annotations

import statistics
from typing import Any

from reports import stats
from reports.results import format_bytes
from reports.variants import AXES, baseline, default_values, label, variant_key, variant_of

# a variant is recommended (or advised against) when it moved the rate by more than this, with
# the 95% confidence intervals apart, in most configurations where both ran
MIN_GAIN = 0.05


def _rates(row: dict[str, Any]) -> list[float]:
    return [row["global_batch"] * row["steps"] / s for s in row["round_seconds"]]


def _variants(results: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The training variants measured (or failed), the baseline first, then in sweep order."""
    seen = {variant_key(base): base}
    for row in [
        *results.get("train", []),
        *(f for f in results.get("failures", []) if f.get("benchmark") == "train"),
    ]:
        v = variant_of(row)
        seen.setdefault(variant_key(v), v)
    return list(seen.values())


def _cell(
    row: dict[str, Any] | None, failed: dict[str, Any] | None, base_rate: stats.Summary | None
) -> dict[str, Any]:
    if row is None:
        status = "failed" if failed else "not run"
        return {"status": status, "error": failed.get("error") if failed else None}
    rate = stats.summarize(_rates(row))
    speedup = rate.median / base_rate.median if base_rate else None
    apart = stats.intervals_apart(base_rate, rate) if base_rate else None
    return {"status": "measured", "samples_per_sec": rate.to_dict(), "speedup": speedup, "apart": apart}


def train_table(
    results: dict[str, Any], variants: list[dict[str, Any]], not_applicable: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    rows: dict[tuple[int, int, Any], dict[str, Any]] = {}
    for row in results.get("train", []):
        rows[(row["gpus"], row["batch_per_gpu"], variant_key(variant_of(row)))] = row
    failed = {
        (f["gpus"], f.get("batch_per_gpu"), variant_key(variant_of(f))): f
        for f in results.get("failures", [])
        if f.get("benchmark") == "train"
    }
    configs = sorted({(g, b) for g, b, _ in rows} | {(g, b) for g, b, _ in failed if b is not None})
    table = []
    for gpus, batch in configs:
        base_row = rows.get((gpus, batch, variant_key(variants[0])))
        base_rate = stats.summarize(_rates(base_row)) if base_row else None
        cells = []
        for v in variants:
            key = (gpus, batch, variant_key(v))
            cell = _cell(rows.get(key), failed.get(key), base_rate)
            if cell["status"] == "not run" and _applies(not_applicable, gpus, v):
                cell["status"] = "n/a"
            cells.append({"variant": v, "label": label(v), **cell})
        table.append({"gpus": gpus, "batch_per_gpu": batch, "cells": cells})
    return table


def _applies(not_applicable: list[dict[str, Any]], gpus: int, variant: dict[str, Any]) -> bool:
    """True when a recorded not-applicable entry covers this variant on `gpus` devices."""
    return any(
        na["gpus"] == gpus and all(variant.get(a) == val for a, val in na["variant"].items())
        for na in not_applicable
    )


def summaries(table: list[dict[str, Any]], variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant other than the baseline: its speedups over the configurations where both ran."""
    out = []
    for i, v in enumerate(variants[1:], start=1):
        cells = [row["cells"][i] for row in table if row["cells"][0]["status"] == "measured"]
        measured = [c for c in cells if c["status"] == "measured" and c["speedup"] is not None]
        speedups = [c["speedup"] for c in measured]
        out.append(
            {
                "variant": v,
                "label": label(v),
                "configurations": len(measured),
                "failed": sum(c["status"] == "failed" for c in cells),
                "median_speedup": statistics.median(speedups) if speedups else None,
                "min_speedup": min(speedups, default=None),
                "max_speedup": max(speedups, default=None),
                "faster": sum(bool(c["apart"]) and c["speedup"] > 1 + MIN_GAIN for c in measured),
                "slower": sum(bool(c["apart"]) and c["speedup"] < 1 - MIN_GAIN for c in measured),
            }
        )
    return out


def allreduce_table(results: dict[str, Any], base_ops: str) -> list[dict[str, Any]]:
    """Per (devices, size): each cross-device ops' bus bandwidth and its speedup over the baseline's."""
    by_ops: dict[tuple[int, int], dict[str, stats.Summary]] = {}
    for row in results.get("allreduce", []):
        n, nbytes = row["gpus"], row["bytes"]
        ops = variant_of(row, "allreduce")["cross_device_ops"]
        bus = [stats.busbw(nbytes * row["iters"] / s / 1e9, n) for s in row["round_seconds"]]
        by_ops.setdefault((n, nbytes), {})[ops] = stats.summarize(bus)
    table = []
    for (n, nbytes), measured in sorted(by_ops.items()):
        base = measured.get(base_ops)
        table.append(
            {
                "gpus": n,
                "bytes": nbytes,
                "size": format_bytes(nbytes),
                "busbw_gbps": {ops: s.median for ops, s in measured.items()},
                "speedup": {ops: s.median / base.median for ops, s in measured.items()} if base else {},
                "apart": {ops: stats.intervals_apart(base, s) for ops, s in measured.items()} if base else {},
            }
        )
    return table


def variant_figures(results: dict[str, Any]) -> dict[str, Any] | None:
    base = baseline(results)
    variants = _variants(results, base)
    info = results.get("variants") or {}
    ops_measured = {variant_of(r, "allreduce")["cross_device_ops"] for r in results.get("allreduce", [])}
    not_applicable = list(info.get("not_applicable") or [])
    if len(variants) <= 1 and len(ops_measured) <= 1 and not not_applicable:
        return None
    table = train_table(results, variants, not_applicable)
    return {
        "baseline": base,
        "baseline_label": label(base) if label(base) != "default" else f"default ({default_values()})",
        "axes": info.get("axes") or {axis: [default] for axis, default in AXES.items()},
        "labels": [label(v) for v in variants],
        "train": table,
        "summary": summaries(table, variants),
        "allreduce": allreduce_table(results, base["cross_device_ops"]),
        "not_applicable": not_applicable,
    }

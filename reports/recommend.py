"""Recommendations argued from the measurements: the best batch per GPU count and, where scaling
efficiency falls below 80%, the likely bottleneck (input pipeline, all-reduce or compute).

The argument for one configuration of N devices that scales badly, with t its measured step time
and t_ideal the step time perfect scaling from the baseline would give (lost = t - t_ideal):
  1. input pipeline, when the pipeline alone delivers less than INPUT_HEADROOM_MIN x the training
     rate: it runs beside training on the same host, so with little slack it sets the pace;
  2. all-reduce, when moving the model's gradients once (measured all-reduce time, interpolated
     to the gradient size) accounts for at least half of the lost time;
  3. compute otherwise (each device's share of the batch is too small to keep it busy, or the
     devices share something: CPU logical devices share the same cores).

Variants (XLA, mixed precision, cross-device ops) are recommended only from their measured
speedup over the baseline variant (reports.variant_figures); one the sweep did not measure is
named as something to measure, never as advice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reports.analysis import allreduce_seconds
from reports.results import format_bytes
from reports.variant_figures import MIN_GAIN
from reports.variants import (
    AXES,
    AXIS_FLAGS,
    baseline,
    baseline_results,
    flag_value,
    is_baseline,
    trainer_flags,
)

EFFICIENCY_TARGET = 0.80
INPUT_HEADROOM_MIN = 1.5
ALLREDUCE_SHARE = 0.5


@dataclass(frozen=True)
class Recommendation:
    kind: str  # best-batch | bottleneck | imbalance | failure | variant | note
    text: str
    gpus: int | None = None
    batch_per_gpu: int | None = None
    bottleneck: str | None = None  # input | allreduce | compute


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'s' if n != 1 else ''}"


def best_batches(figures: dict[str, Any]) -> list[Recommendation]:
    unit = figures["unit"]
    out = []
    for n in sorted({r["gpus"] for r in figures["train"]}):
        rows = [r for r in figures["train"] if r["gpus"] == n]
        best = max(rows, key=lambda r: r["samples_per_sec"]["median"])
        weak = _series_point(figures, "weak", best["batch_per_gpu"], n)
        eff = weak.get("efficiency") if weak else None
        tail = f", scaling efficiency {eff:.0%}" if eff is not None and n != weak_base(figures) else ""
        out.append(
            Recommendation(
                "best-batch",
                f"{_plural(n, unit)}: {best['batch_per_gpu']} per {unit} (global batch "
                f"{best['global_batch']}) is fastest at "
                f"{best['samples_per_sec']['median']:,.0f} samples/s{tail}",
                n,
                best["batch_per_gpu"],
            )
        )
    return out


def weak_base(figures: dict[str, Any]) -> int | None:
    return next((s["base_gpus"] for s in figures["series"]), None)


def _series_point(figures: dict[str, Any], scaling: str, batch: int, gpus: int) -> dict[str, Any] | None:
    for s in figures["series"]:
        if s["scaling"] == scaling and s["batch"] == batch:
            return next((p for p in s["points"] if p["gpus"] == gpus), None)
    return None


def diagnose(
    results: dict[str, Any], figures: dict[str, Any], scaling: str, point: dict[str, Any]
) -> Recommendation:
    """Why one (N, batch) point of a series scales below the target, argued from the measurements."""
    unit = figures["unit"]
    n, b = point["gpus"], point["batch_per_gpu"]
    step = point["global_batch"] / point["samples_per_sec"]
    ideal = point["global_batch"] / point["ideal_samples_per_sec"]
    lost = max(step - ideal, 0.0)
    head = next((r["headroom"] for r in figures["input"] if r["gpus"] == n and r["batch_per_gpu"] == b), None)
    raw: dict[str, Any] = next(
        (r for r in results.get("train", []) if r["gpus"] == n and r["batch_per_gpu"] == b), {}
    )
    grad_bytes: int = raw.get("gradient_bytes") or 0
    t_ar = allreduce_seconds(figures["allreduce"], n, grad_bytes) if grad_bytes and n > 1 else None
    where = (
        f"{_plural(n, unit)} at {b} per {unit} ({scaling} scaling): efficiency "
        f"{point['efficiency']:.0%}, step {step * 1e3:.1f} ms against {ideal * 1e3:.1f} ms ideal"
    )
    evidence = []
    if head is not None:
        evidence.append(f"input pipeline alone {head:.1f}x the training rate")
    if t_ar is not None:
        evidence.append(
            f"all-reduce of the {format_bytes(grad_bytes)} of gradients ~{t_ar * 1e3:.1f} ms per step"
        )
    measured = f" ({'; '.join(evidence)})" if evidence else ""
    if head is not None and head < INPUT_HEADROOM_MIN:
        return Recommendation(
            "bottleneck",
            f"{where}: likely the input pipeline{measured}. Feed faster: cache or prefetch more, "
            "parallelise decoding, or move preprocessing off the training host",
            n,
            b,
            "input",
        )
    if t_ar is not None and lost > 0 and t_ar >= ALLREDUCE_SHARE * lost:
        return Recommendation(
            "bottleneck",
            f"{where}: likely the all-reduce{measured}. Use a larger batch per {unit} so each "
            f"gradient exchange is amortised over more work, or a faster link (check `gpudiag check` "
            f"for P2P/NVLink); {_measured_or_not(figures, 'mixed_precision', True)}; "
            f"{_measured_or_not(figures, 'cross_device_ops', None)}",
            n,
            b,
            "allreduce",
        )
    if results.get("device_kind") != "gpu":
        why = (
            "CPU logical devices share the same cores, so adding replicas adds no compute; "
            "this measures the harness and the strategy's overhead, not hardware scaling"
        )
    else:
        why = f"each {unit}'s share of the batch is too small to keep it busy: try a larger batch per {unit}"
    return Recommendation("bottleneck", f"{where}: likely compute{measured}. {why}", n, b, "compute")


def _measured_or_not(figures: dict[str, Any], axis: str, value: Any) -> str:
    """What the sweep measured of one axis (value None: any other value than the baseline's), or
    the flag that would measure it."""
    variants = figures.get("variants") or {}
    found = [
        s
        for s in variants.get("summary", [])
        if s["median_speedup"] is not None
        and s["variant"].get(axis) != variants["baseline"].get(axis)
        and (value is None or s["variant"].get(axis) == value)
        and all(s["variant"].get(a) == variants["baseline"].get(a) for a in AXES if a != axis)
    ]
    if found:
        return "measured: " + ", ".join(f"{s['label']} {s['median_speedup']:.2f}x" for s in found)
    what = "mixed precision" if axis == "mixed_precision" else "another cross-device ops"
    values = "off on" if axis == "mixed_precision" else "auto nccl hierarchical reduce-to-one"
    return f"{what} was not measured (add {AXIS_FLAGS[axis]} {values})"


def variant_advice(figures: dict[str, Any]) -> list[Recommendation]:
    """From the variants' measured speedups only: use, avoid, or no measurable difference."""
    variants = figures.get("variants")
    if not variants:
        return []
    base = variants["baseline_label"]
    out = []
    ranked = sorted(
        (s for s in variants["summary"] if s["median_speedup"] is not None),
        key=lambda s: -s["median_speedup"],
    )
    for s in ranked:
        n, k = s["configurations"], s["median_speedup"]
        spread = (
            f"{s['min_speedup']:.2f}-{s['max_speedup']:.2f}x over {n} configuration{'s' if n != 1 else ''}"
        )
        flags = trainer_flags(s["variant"])
        if k >= 1 + MIN_GAIN and s["faster"] * 2 > n:
            verdict = (
                f"faster: use it (`python -m training {flags}`)" if flags else "faster: use the defaults"
            )
        elif k <= 1 - MIN_GAIN and s["slower"] * 2 > n:
            verdict = f"slower: keep {base}"
        else:
            verdict = f"no clear difference (95% CIs overlap, or within {MIN_GAIN:.0%})"
        failed = f"; failed in {s['failed']}" if s["failed"] else ""
        out.append(
            Recommendation(
                "variant",
                f"{s['label']}: measured {k:.2f}x the {base} (median; {spread}, beyond the 95% CIs "
                f"faster in {s['faster']}, slower in {s['slower']}{failed}): {verdict}",
            )
        )
    for na in variants["not_applicable"]:
        what = ", ".join(f"{AXIS_FLAGS[a]} {flag_value(v)}" for a, v in na["variant"].items())
        out.append(
            Recommendation(
                "note", f"{what} on {na['gpus']} {figures['unit']}(s) not measured: {na['reason']}"
            )
        )
    return out


def recommend(results: dict[str, Any], figures: dict[str, Any]) -> list[Recommendation]:
    base = baseline(results)
    results = baseline_results(results)
    out = best_batches(figures)
    for s in figures["series"]:
        for point in s["points"]:
            eff = point.get("efficiency")
            if eff is not None and point["gpus"] != s["base_gpus"] and eff < EFFICIENCY_TARGET:
                out.append(diagnose(results, figures, s["scaling"], point))
    unit = figures["unit"]
    for row in figures["train"]:
        util = row.get("utilization")
        if util and util["imbalanced"]:
            means = ", ".join(f"GPU {g} {m:.0f}%" for g, m in sorted(util["mean_pct"].items()))
            out.append(
                Recommendation(
                    "imbalance",
                    f"{_plural(row['gpus'], unit)} at {row['batch_per_gpu']} per {unit}: uneven "
                    f"utilisation ({means}); GPU(s) {', '.join(util['lagging_gpus'])} wait on the "
                    "others: check for a slower card, a narrower PCIe link or another process",
                    row["gpus"],
                    row["batch_per_gpu"],
                )
            )
    ooms: dict[int, int] = {}
    for f in figures["failures"]:
        benchmark = f.get("benchmark", "train")
        if benchmark in ("train", "allreduce") and not is_baseline(f, benchmark, base):
            continue  # another variant's out-of-memory is in the failures table, not the batch advice
        if f.get("error") == "oom" and f.get("batch_per_gpu") is not None:
            ooms[f["gpus"]] = min(ooms.get(f["gpus"], f["batch_per_gpu"]), f["batch_per_gpu"])
    for n, b in sorted(ooms.items()):
        fits = [r["batch_per_gpu"] for r in figures["train"] if r["gpus"] == n and r["batch_per_gpu"] < b]
        largest = f"; the largest that fit was {max(fits)}" if fits else ""
        out.append(
            Recommendation(
                "failure",
                f"{_plural(n, unit)}: out of memory at {b} per {unit}{largest}",
                n,
                b,
            )
        )
    return out + variant_advice(figures)

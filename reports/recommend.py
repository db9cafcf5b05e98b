"""Recommendations argued from the measurements: the best batch per GPU count and, where scaling
efficiency falls below 80%, the likely bottleneck (throttling, input pipeline, all-reduce or
compute).

The argument for one configuration of N devices that scales badly, with t its measured step time
and t_ideal the step time perfect scaling from the baseline would give (lost = t - t_ideal):
  1. throttling, when a GPU of the case was throttled while it was measured (reports.throttling):
     every synchronous step waits for it, so the efficiency says little about scaling;
  2. input pipeline, when the pipeline alone delivers less than INPUT_HEADROOM_MIN x the training
     rate: it runs beside training on the same host, so with little slack it sets the pace;
  3. all-reduce, when moving the model's gradients once (measured all-reduce time, interpolated
     to the gradient size) accounts for at least half of the lost time;
  4. compute otherwise (each device's share of the batch is too small to keep it busy, or the
     devices share something: CPU logical devices share the same cores).

Variants (XLA, mixed precision, cross-device ops) are recommended only from their measured
speedup over the baseline variant (reports.variant_figures); one the sweep did not measure is
named as something to measure, never as advice.
"""

from __future__ import annotations

from typing import Any

from reports.analysis import allreduce_seconds
from reports.figure_rows import Figures, Recommendation, SeriesPoint, VariantSummary
from reports.results import Results, format_bytes
from reports.throttling import GUIDE, describe
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


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}{'s' if n != 1 else ''}"


def best_batches(figures: Figures) -> list[Recommendation]:
    unit = figures.unit
    out = []
    for n in sorted({r.gpus for r in figures.train}):
        best = max((r for r in figures.train if r.gpus == n), key=lambda r: r.samples_per_sec.median)
        weak = _series_point(figures, "weak", best.batch_per_gpu, n)
        eff = weak.efficiency if weak else None
        tail = f", scaling efficiency {eff:.0%}" if eff is not None and n != weak_base(figures) else ""
        out.append(
            Recommendation(
                "best-batch",
                f"{_plural(n, unit)}: {best.batch_per_gpu} per {unit} (global batch "
                f"{best.global_batch}) is fastest at "
                f"{best.samples_per_sec.median:,.0f} samples/s{tail}",
                n,
                best.batch_per_gpu,
            )
        )
    return out


def weak_base(figures: Figures) -> int | None:
    return next((s.base_gpus for s in figures.series), None)


def _series_point(figures: Figures, scaling: str, batch: int, gpus: int) -> SeriesPoint | None:
    for s in figures.series:
        if s.scaling == scaling and s.batch == batch:
            return next((p for p in s.points if p.gpus == gpus), None)
    return None


def diagnose(results: Results, figures: Figures, scaling: str, point: SeriesPoint) -> Recommendation:
    """Why one (N, batch) point of a series scales below the target, argued from the measurements."""
    unit = figures.unit
    n, b = point.gpus, point.batch_per_gpu
    assert point.samples_per_sec and point.ideal_samples_per_sec and point.efficiency is not None
    step = point.global_batch / point.samples_per_sec
    ideal = point.global_batch / point.ideal_samples_per_sec
    lost = max(step - ideal, 0.0)
    head = next((r.headroom for r in figures.input if r.gpus == n and r.batch_per_gpu == b), None)
    raw = next((r for r in results.train if r.gpus == n and r.batch_per_gpu == b), None)
    grad_bytes = (raw.gradient_bytes if raw else None) or 0
    t_ar = allreduce_seconds(figures.allreduce, n, grad_bytes) if grad_bytes and n > 1 else None
    where = (
        f"{_plural(n, unit)} at {b} per {unit} ({scaling} scaling): efficiency "
        f"{point.efficiency:.0%}, step {step * 1e3:.1f} ms against {ideal * 1e3:.1f} ms ideal"
    )
    evidence = []
    if head is not None:
        evidence.append(f"input pipeline alone {head:.1f}x the training rate")
    if t_ar is not None:
        evidence.append(
            f"all-reduce of the {format_bytes(grad_bytes)} of gradients ~{t_ar * 1e3:.1f} ms per step"
        )
    measured = f" ({'; '.join(evidence)})" if evidence else ""
    hot = describe(raw)
    if hot:  # a throttled GPU sets every step's pace: the figure says little about scaling
        return Recommendation(
            "bottleneck",
            f"{where}: likely throttling, not scaling: {hot} while measured{measured}. Cool the GPU or "
            f"lift its power cap (`gpudiag check`, {GUIDE}) and measure again",
            n,
            b,
            "throttling",
        )
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
    if results.device_kind != "gpu":
        why = (
            "CPU logical devices share the same cores, so adding replicas adds no compute; "
            "this measures the harness and the strategy's overhead, not hardware scaling"
        )
    else:
        why = f"each {unit}'s share of the batch is too small to keep it busy: try a larger batch per {unit}"
    return Recommendation("bottleneck", f"{where}: likely compute{measured}. {why}", n, b, "compute")


def _differs_only_in(s: VariantSummary, base: dict[str, Any], axis: str, value: Any) -> bool:
    """True for a variant that differs from `base` in `axis` alone (value None: to any other value)."""
    return (
        s.variant.get(axis) != base.get(axis)
        and (value is None or s.variant.get(axis) == value)
        and all(s.variant.get(a) == base.get(a) for a in AXES if a != axis)
    )


def _measured_or_not(figures: Figures, axis: str, value: Any) -> str:
    """What the sweep measured of one axis (value None: any other value than the baseline's), or
    the flag that would measure it."""
    variants = figures.variants
    found = [
        s
        for s in (variants.summary if variants else [])
        if s.median_speedup is not None and variants and _differs_only_in(s, variants.baseline, axis, value)
    ]
    if found:
        return "measured: " + ", ".join(f"{s.label} {s.median_speedup:.2f}x" for s in found)
    what = "mixed precision" if axis == "mixed_precision" else "another cross-device ops"
    values = "off on" if axis == "mixed_precision" else "auto nccl hierarchical reduce-to-one"
    return f"{what} was not measured (add {AXIS_FLAGS[axis]} {values})"


def _verdict(s: VariantSummary, base: str) -> str:
    n, k = s.configurations, s.median_speedup or 0
    flags = trainer_flags(s.variant)
    if k >= 1 + MIN_GAIN and s.faster * 2 > n:
        return f"faster: use it (`python -m training {flags}`)" if flags else "faster: use the defaults"
    if k <= 1 - MIN_GAIN and s.slower * 2 > n:
        return f"slower: keep {base}"
    return f"no clear difference (95% CIs overlap, or within {MIN_GAIN:.0%})"


def variant_advice(figures: Figures) -> list[Recommendation]:
    """From the variants' measured speedups only: use, avoid, or no measurable difference."""
    variants = figures.variants
    if not variants:
        return []
    base = variants.baseline_label
    out = []
    ranked = sorted(
        (s for s in variants.summary if s.median_speedup is not None), key=lambda s: -(s.median_speedup or 0)
    )
    for s in ranked:
        n = s.configurations
        spread = f"{s.min_speedup:.2f}-{s.max_speedup:.2f}x over {n} configuration{'s' if n != 1 else ''}"
        failed = f"; failed in {s.failed}" if s.failed else ""
        out.append(
            Recommendation(
                "variant",
                f"{s.label}: measured {s.median_speedup:.2f}x the {base} (median; {spread}, "
                f"beyond the 95% CIs faster in {s.faster}, slower in {s.slower}{failed}): "
                f"{_verdict(s, base)}",
            )
        )
    for na in variants.not_applicable:
        what = ", ".join(f"{AXIS_FLAGS[a]} {flag_value(v)}" for a, v in na.variant.items())
        out.append(Recommendation("note", f"{what} on {na.gpus} {figures.unit}(s) not measured: {na.reason}"))
    return out


def _imbalance(figures: Figures) -> list[Recommendation]:
    out = []
    for row in figures.train:
        util = row.utilization
        if util and util.imbalanced:
            means = ", ".join(f"GPU {g} {m:.0f}%" for g, m in sorted(util.mean_pct.items()))
            out.append(
                Recommendation(
                    "imbalance",
                    f"{_plural(row.gpus, figures.unit)} at {row.batch_per_gpu} per {figures.unit}: uneven "
                    f"utilisation ({means}); GPU(s) {', '.join(util.lagging_gpus)} wait on the "
                    "others: check for a slower card, a narrower PCIe link or another process",
                    row.gpus,
                    row.batch_per_gpu,
                )
            )
    return out


def _out_of_memory(figures: Figures, base: dict[str, Any]) -> list[Recommendation]:
    ooms: dict[int, int] = {}
    for f in figures.failures:
        benchmark = f.benchmark or "train"
        if benchmark in ("train", "allreduce") and not is_baseline(f.variant, benchmark, base):
            continue  # another variant's out-of-memory is in the failures table, not the batch advice
        if f.error == "oom" and f.batch_per_gpu is not None and f.gpus is not None:
            ooms[f.gpus] = min(ooms.get(f.gpus, f.batch_per_gpu), f.batch_per_gpu)
    out = []
    unit = figures.unit
    for n, b in sorted(ooms.items()):
        fits = [r.batch_per_gpu for r in figures.train if r.gpus == n and r.batch_per_gpu < b]
        largest = f"; the largest that fit was {max(fits)}" if fits else ""
        out.append(
            Recommendation("failure", f"{_plural(n, unit)}: out of memory at {b} per {unit}{largest}", n, b)
        )
    return out


def recommend(results: Results, figures: Figures) -> list[Recommendation]:
    base = baseline(results)
    results = baseline_results(results)
    out = best_batches(figures)
    for s in figures.series:
        for point in s.points:
            eff = point.efficiency
            if eff is not None and point.gpus != s.base_gpus and eff < EFFICIENCY_TARGET:
                out.append(diagnose(results, figures, s.scaling, point))
    return out + _imbalance(figures) + _out_of_memory(figures, base) + variant_advice(figures)

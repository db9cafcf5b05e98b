"""From raw sweep results to the measured figures of the report: throughput, speedup, scaling
efficiency, all-reduce bandwidth, input-pipeline headroom, fraction of datasheet peak, GPU
utilisation, where each case's step time goes (the trainer's verdict: common.bottleneck) and, with
--data, what the input costs against synthetic data (all of the baseline variant), and the variants
side by side (reports.variant_figures).

Pure: typed results in (reports.results), typed figures out (reports.figure_rows). reports/figures.py
adds the recommendations argued from these figures (reports/recommend.py, which reads this module).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.bottleneck import Measurements, judge
from diagnostics.knowledge import peak_for
from diagnostics.monitor import lagging
from reports import stats
from reports.codec import to_json
from reports.figure_rows import (
    AllreduceFigure,
    CaseBottleneck,
    Figures,
    InputCost,
    InputFigure,
    Series,
    SeriesPoint,
    TrainFigure,
    Utilization,
)
from reports.results import Results, TrainRow, format_bytes
from reports.variant_figures import variant_figures
from reports.variants import baseline_results


@dataclass(frozen=True)
class Peaks:
    """Datasheet peaks of the GPUs one configuration ran on (None where a model is unknown)."""

    fp32_tflops: float | None
    link_gbps_per_direction: float | None
    models: tuple[str, ...]
    sources: tuple[str, ...]


def lookup_peaks(gpu_names: Iterable[str]) -> Peaks:
    """Sum of FP32 peaks and the slowest GPU-to-GPU link, from diagnostics.knowledge."""
    names = list(gpu_names)
    if not names:
        return Peaks(None, None, (), ())
    peaks = [peak_for(n) for n in names]
    if any(p is None for p in peaks):
        return Peaks(None, None, (), ())
    known = [p for p in peaks if p is not None]
    # datasheets quote link bandwidth as the total of both directions; busbw is per direction
    return Peaks(
        fp32_tflops=sum(p.fp32_tflops for p in known),
        link_gbps_per_direction=min(p.link_gbps for p in known) / 2,
        models=tuple(sorted({p.model for p in known})),
        sources=tuple(sorted({p.source for p in known})),
    )


def title(results: Results) -> str:
    model = results.model or "?"
    cluster = f"{results.workers} workers x " if results.workers else ""
    if results.device_kind == "gpu":
        names = results.environment.selected_gpu_names
        kinds = sorted(set(names)) or ["GPU"]
        most = max(results.gpu_counts, default=0)
        return f"Scaling report: {model} on {cluster}up to {most} x {' + '.join(kinds)}"
    why = results.fallback_reason
    tail = f" (no GPU: {why})" if why else " (--cpu-replicas: no GPU used)"
    return f"Scaling report: {model} on {cluster}CPU logical devices{tail}"


def train_rows(results: Results) -> list[TrainFigure]:
    rows = []
    for row in sorted(results.train, key=lambda r: (r.gpus, r.batch_per_gpu)):
        rate = stats.summarize(row.rates())
        flops = row.flops_per_sample
        achieved = flops * rate.median / 1e12 if flops else None
        peaks = lookup_peaks(row.gpu_names or []) if results.device_kind == "gpu" else None
        fraction = achieved / peaks.fp32_tflops if achieved and peaks and peaks.fp32_tflops else None
        rows.append(
            TrainFigure(
                gpus=row.gpus,
                batch_per_gpu=row.batch_per_gpu,
                global_batch=row.global_batch,
                samples_per_sec=rate,
                samples_per_sec_per_gpu=rate.median / (row.gpus * (row.workers or 1)),
                step_seconds=row.global_batch / rate.median,
                achieved_tflops=achieved,
                peak_fp32_tflops=peaks.fp32_tflops if peaks else None,
                fraction_of_peak=fraction,
                utilization=utilization_of(row.utilization),
            )
        )
    return rows


def utilization_of(samples: dict[str, list[float]] | None) -> Utilization | None:
    """Mean utilisation per GPU from NVML samples; flags a GPU well below the busiest one."""
    if not samples:
        return None
    means = {gpu: sum(v) / len(v) for gpu, v in samples.items() if v}
    if not means:
        return None
    idle = lagging(means)
    return Utilization(mean_pct=means, imbalanced=bool(idle), lagging_gpus=idle)


def utilization_summary(samples: dict[str, list[float]] | None) -> dict[str, Any] | None:
    """utilization_of as scaling.json writes it."""
    summary = utilization_of(samples)
    return to_json(summary) if summary else None


def _find(rows: list[TrainFigure], gpus: int, batch: int) -> TrainFigure | None:
    return next((r for r in rows if r.gpus == gpus and r.batch_per_gpu == batch), None)


def _plans(results: Results, batch: int, counts: list[int]) -> list[tuple[str, str, list[tuple[int, int]]]]:
    """(scaling, label, configurations) of the series one batch size gives."""
    plans = []
    if results.scaling in ("weak", "both"):
        plans.append(("weak", f"{batch} per {results.unit}", [(n, batch) for n in counts]))
    if results.scaling in ("strong", "both"):
        total = batch * counts[0]
        plans.append(("strong", f"global batch {total}", [(n, total // n) for n in counts if total % n == 0]))
    return plans


def series(results: Results, rows: list[TrainFigure]) -> list[Series]:
    """Weak series keep the batch per GPU; strong series keep the global batch (batch x N0)."""
    counts = sorted(results.gpu_counts or {r.gpus for r in rows})
    if not counts:
        return []
    base = counts[0]
    out = []
    for batch in sorted(results.batch_sizes or {r.batch_per_gpu for r in rows}):
        for scaling, label, configs in _plans(results, batch, counts):
            base_row = _find(rows, *configs[0]) if configs and configs[0][0] == base else None
            base_rate = base_row.samples_per_sec.median if base_row else None
            points = []
            for n, b in configs:
                row = _find(rows, n, b)
                rate = row.samples_per_sec.median if row else None
                points.append(
                    SeriesPoint(
                        gpus=n,
                        batch_per_gpu=b,
                        global_batch=n * b * (results.workers or 1),
                        samples_per_sec=rate,
                        speedup=rate / base_rate if rate and base_rate else None,
                        efficiency=stats.scaling_efficiency(rate, n, base_rate, base)
                        if rate and base_rate
                        else None,
                        ideal_samples_per_sec=base_rate * n / base if base_rate else None,
                    )
                )
            out.append(Series(scaling=scaling, batch=batch, label=label, base_gpus=base, points=points))
    return out


def allreduce_rows(results: Results) -> list[AllreduceFigure]:
    rows = []
    for row in sorted(results.allreduce, key=lambda r: (r.gpus, r.bytes)):
        per_op = [s / row.iters for s in row.round_seconds]
        alg = [stats.algbw(row.bytes, t) / 1e9 for t in per_op]
        # ranks: every device of every worker (across workers the ring crosses the network)
        bus = stats.summarize([stats.busbw(a, row.gpus * (row.workers or 1)) for a in alg])
        peaks = lookup_peaks(row.gpu_names or []) if results.device_kind == "gpu" else None
        link = peaks.link_gbps_per_direction if peaks else None
        rows.append(
            AllreduceFigure(
                gpus=row.gpus,
                bytes=row.bytes,
                size=format_bytes(row.bytes),
                iters=row.iters,
                time_us=stats.summarize([t * 1e6 for t in per_op]),
                algbw_gbps=stats.summarize(alg).median,
                busbw_gbps=bus,
                link_gbps_per_direction=link,
                fraction_of_link=bus.median / link if link else None,
            )
        )
    return rows


def input_rows(results: Results, train: list[TrainFigure]) -> list[InputFigure]:
    rows = []
    for row in sorted(results.input, key=lambda r: (r.gpus, r.batch_per_gpu)):
        rate = stats.summarize(row.rates())
        trained = _find(train, row.gpus, row.batch_per_gpu)
        train_rate = trained.samples_per_sec.median if trained else None
        rows.append(
            InputFigure(
                gpus=row.gpus,
                batch_per_gpu=row.batch_per_gpu,
                global_batch=row.global_batch,
                pipeline_samples_per_sec=rate,
                train_samples_per_sec=train_rate,
                headroom=rate.median / train_rate if train_rate else None,
            )
        )
    return rows


def allreduce_seconds(allreduce: list[AllreduceFigure], gpus: int, nbytes: float) -> float | None:
    """Time of one all-reduce of `nbytes` on `gpus`, log-interpolated between measured sizes."""
    points = sorted((r.bytes, r.time_us.median / 1e6) for r in allreduce if r.gpus == gpus and r.bytes > 0)
    if not points or nbytes <= 0:
        return None
    if nbytes <= points[0][0]:
        return points[0][1]
    for (b0, t0), (b1, t1) in itertools.pairwise(points):
        if b0 <= nbytes <= b1:
            w = (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    # beyond the largest size: the bandwidth of the largest message holds
    b_last, t_last = points[-1]
    return t_last * nbytes / b_last


def peak_flops(row: TrainRow) -> float | None:
    """The datasheet FLOP/s of the GPUs a row ran on, in its precision (FP16 tensor cores under
    mixed_float16, else FP32), every worker's together: the trainer's peak for the same run."""
    peaks = [peak_for(name) for name in row.gpu_names or []]
    mixed = row.dtype_policy == "mixed_float16"
    tflops = [None if p is None else p.fp16_tensor_tflops if mixed else p.fp32_tflops for p in peaks]
    if not tflops or None in tflops:
        return None
    return sum(t for t in tflops if t is not None) * 1e12 * (row.workers or 1)


def case_bottlenecks(
    results: Results, inputs: list[InputFigure], allreduce: list[AllreduceFigure]
) -> list[CaseBottleneck]:
    """Each training case's verdict and shares by the trainer's rule (common.bottleneck.judge),
    from the sweep's own rows: the input pipeline alone at the same devices and batch, one
    all-reduce at the row's gradient size (interpolated between the measured sizes), the model's
    FLOPs against the datasheet peak on GPUs. `results`: the baseline variant's."""
    out = []
    for row in sorted(results.train, key=lambda r: (r.gpus, r.batch_per_gpu)):
        rate = stats.summarize(row.rates()).median
        replicas = row.gpus * (row.workers or 1)
        pipeline = next(
            (i for i in inputs if (i.gpus, i.batch_per_gpu) == (row.gpus, row.batch_per_gpu)), None
        )
        grads = row.gradient_bytes or 0
        found = judge(
            Measurements(
                samples_per_sec=rate,
                global_batch_size=row.global_batch,
                replicas=replicas,
                input_samples_per_sec=pipeline.pipeline_samples_per_sec.median if pipeline else None,
                allreduce_seconds=allreduce_seconds(allreduce, row.gpus, grads) if replicas > 1 else None,
                gradient_bytes=grads,
                flops_per_sample=row.flops_per_sample,
                peak_flops=peak_flops(row) if results.device_kind == "gpu" else None,
            )
        )
        if found is not None:
            out.append(
                CaseBottleneck(
                    gpus=row.gpus,
                    batch_per_gpu=row.batch_per_gpu,
                    samples_per_sec=rate,
                    verdict=found.verdict,
                    shares=found.shares,
                    input_headroom=found.input_headroom,
                    allreduce_seconds=found.allreduce_seconds,
                    gradient_bytes=row.gradient_bytes,
                    fraction_of_peak=found.fraction_of_peak,
                )
            )
    return out


def input_costs(results: Results) -> list[InputCost]:
    """With --data: each case on the user's data against its companion on synthetic images of the
    same size (the row's `synthetic`); cost = 1 - real / synthetic samples/s."""
    out = []
    for row in sorted(results.train, key=lambda r: (r.gpus, r.batch_per_gpu)):
        if row.synthetic is None:
            continue
        real, synthetic = stats.summarize(row.rates()), stats.summarize(row.synthetic.rates())
        out.append(
            InputCost(
                gpus=row.gpus,
                batch_per_gpu=row.batch_per_gpu,
                real_samples_per_sec=real,
                synthetic_samples_per_sec=synthetic,
                synthetic_shape=row.synthetic.input_shape,
                cost=1 - real.median / synthetic.median,
                apart=stats.intervals_apart(real, synthetic),
            )
        )
    return out


def analyse(results: Results) -> Figures:
    """Every measured figure (reports.figures.report_figures adds the recommendations).

    The scaling figures are the baseline variant's; the variants side by side are `variants`."""
    full, results = results, baseline_results(results)
    train = train_rows(results)
    allreduce, inputs = allreduce_rows(results), input_rows(results, train)
    return Figures(
        title=title(results),
        unit=results.unit,
        train=train,
        series=series(results, train),
        allreduce=allreduce,
        input=inputs,
        variants=variant_figures(full),
        failures=list(full.failures),
        harness=results.harness,
        bottlenecks=case_bottlenecks(results, inputs, allreduce),
        input_costs=input_costs(results),
    )

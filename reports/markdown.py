"""scaling.md: the report a person reads, rendered from the figures (tables by tabulate)."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from reports.figure_rows import Figures, SeriesPoint, TrainFigure
from reports.markdown_bottlenecks import bottleneck_sections
from reports.markdown_variants import variants_section
from reports.recommend import EFFICIENCY_TARGET, INPUT_HEADROOM_MIN
from reports.results import Harness, Results, format_bytes
from reports.stats import Summary
from reports.throttling import footnotes, throttled_cases

PLOT_TITLES = {
    "throughput.png": "Throughput against device count, with the ideal (linear) line",
    "efficiency.png": "Scaling efficiency per batch size",
    "allreduce.png": "All-reduce bus bandwidth against message size",
}


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _pct(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _ci(summary: Summary, fmt: str = ",.0f") -> str:
    if summary.ci_low is None or summary.ci_high is None:
        return "n/a"
    return f"[{format(summary.ci_low, fmt)}, {format(summary.ci_high, fmt)}]"


def _times(value: float | None) -> str:
    return _num(value, ".2f") + ("x" if value is not None else "")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _point_row(p: SeriesPoint, r: TrainFigure | None, mark: str = "") -> list[Any]:
    if r is None:
        return [p.gpus, p.batch_per_gpu, p.global_batch, "failed", "", "", "", "", "", ""]
    sps = r.samples_per_sec
    return [
        p.gpus,
        p.batch_per_gpu,
        p.global_batch,
        _num(sps.median),
        _ci(sps),
        _num(r.samples_per_sec_per_gpu),
        _times(p.speedup),
        _pct(p.efficiency) + (f" {mark}" if mark else ""),
        _pct(sps.cv, 1),
        _pct(r.fraction_of_peak, 1),
    ]


def throughput_section(figures: Figures, results: Results | None = None) -> list[str]:
    unit = figures.unit
    throttled = throttled_cases(results) if results is not None else []
    marks = {(c.gpus, c.batch_per_gpu): c.mark for c in throttled}
    by_config = {(r.gpus, r.batch_per_gpu): r for r in figures.train}
    headers = [
        f"{unit}s",
        f"batch per {unit}",
        "global batch",
        "samples/s (median)",
        "95% CI",
        f"per {unit}",
        "speedup",
        "efficiency",
        "CV",
        "of FP32 peak",
    ]
    out = []
    for scaling in ("weak", "strong"):
        chosen = [s for s in figures.series if s.scaling == scaling]
        if not chosen:
            continue
        keeps = f"batch per {unit}" if scaling == "weak" else "global batch"
        rows = [
            _point_row(p, by_config.get((p.gpus, p.batch_per_gpu)), marks.get((p.gpus, p.batch_per_gpu), ""))
            for s in chosen
            for p in s.points
        ]
        out += [f"### {scaling.capitalize()} scaling (keeps the {keeps})", "", _table(headers, rows), ""]
    if not out:
        return ["No training configuration completed.", ""]
    out += footnotes(throttled, unit)
    base = next((s.base_gpus for s in figures.series), 1)
    out.append(
        f"Speedup is T(N) / T({base}); scaling efficiency is T(N) x {base} / (N x T({base})), "
        f"T = samples/s. Efficiency below {EFFICIENCY_TARGET:.0%} is explained under Recommendations."
    )
    out.append("")
    return out


def peak_section(figures: Figures) -> list[str]:
    rows = [
        [
            r.gpus,
            r.batch_per_gpu,
            _num(r.achieved_tflops, ".3f"),
            _num(r.peak_fp32_tflops, ".1f"),
            _pct(r.fraction_of_peak, 1),
        ]
        for r in figures.train
        if r.achieved_tflops is not None
    ]
    if not rows:
        return []
    out = ["### Fraction of peak compute", ""]
    if all(r.peak_fp32_tflops is None for r in figures.train):
        out += [
            "The datasheet peak of these devices is not known (CPU devices, or a GPU model missing "
            "from diagnostics/knowledge.py), so only the achieved rate is shown.",
            "",
        ]
    unit = figures.unit
    headers = [f"{unit}s", f"batch per {unit}", "achieved TFLOP/s", "FP32 peak TFLOP/s (sum)", "fraction"]
    out += [
        _table(headers, rows),
        "",
        "Achieved = the model's training FLOPs per sample (6 x the Conv/Dense multiply-accumulates) "
        "x samples/s. The peak is the datasheet FP32 (non-tensor) rate; TensorFlow uses TF32 tensor "
        "cores for float32 convolutions and matmuls on Ampere and later, so the fraction can exceed "
        "what FP32 alone would allow.",
        "",
    ]
    return out


def allreduce_section(figures: Figures) -> list[str]:
    out = ["## All-reduce", ""]
    if not figures.allreduce:
        return [*out, "Not measured (one device per configuration, or no sizes asked for).", ""]
    table = [
        [
            r.gpus,
            r.size,
            _num(r.time_us.median, ",.1f"),
            _num(r.algbw_gbps, ".3f"),
            _num(r.busbw_gbps.median, ".3f"),
            _ci(r.busbw_gbps, ".3f"),
            _pct(r.fraction_of_link, 1),
        ]
        for r in figures.allreduce
    ]
    headers = [
        f"{figures.unit}s",
        "size",
        "time (us)",
        "algbw (GB/s)",
        "busbw (GB/s)",
        "busbw 95% CI",
        "of link",
    ]
    out += [
        _table(headers, table),
        "",
        "A SUM all-reduce of a float32 message of that size per replica through the strategy's "
        "cross-device ops, chained so each waits for the one before. algbw = bytes / time and "
        "busbw = algbw x 2(N-1)/N, as nccl-tests defines them (GB = 10^9 bytes). The link "
        "fraction compares busbw with half the datasheet GPU-to-GPU bandwidth (datasheets quote "
        "both directions).",
        "",
    ]
    return out


def input_section(figures: Figures) -> list[str]:
    if not figures.input:
        return []
    unit = figures.unit
    table = [
        [
            r.gpus,
            r.batch_per_gpu,
            r.global_batch,
            _num(r.pipeline_samples_per_sec.median),
            _ci(r.pipeline_samples_per_sec),
            _num(r.train_samples_per_sec),
            _times(r.headroom),
        ]
        for r in figures.input
    ]
    headers = [
        f"{unit}s",
        f"batch per {unit}",
        "global batch",
        "pipeline samples/s",
        "95% CI",
        "training samples/s",
        "headroom",
    ]
    return [
        "## Input pipeline",
        "",
        _table(headers, table),
        "",
        "The trainer's own tf.data pipeline, distributed to the replicas, with no model. Headroom = "
        f"pipeline rate / training rate; below {INPUT_HEADROOM_MIN}x the pipeline is a suspect.",
        "",
    ]


def utilization_section(figures: Figures) -> list[str]:
    table = []
    for r in figures.train:
        if r.utilization is None:
            continue
        means = ", ".join(f"{g}: {m:.0f}%" for g, m in sorted(r.utilization.mean_pct.items()))
        table.append([r.gpus, r.batch_per_gpu, means, "yes" if r.utilization.imbalanced else "no"])
    if not table:
        return []
    return [
        "## GPU utilisation (NVML, sampled during the measured rounds)",
        "",
        _table(["GPUs", "batch per GPU", "mean utilisation per GPU", "imbalanced"], table),
        "",
    ]


def failures_section(figures: Figures) -> list[str]:
    if not figures.failures:
        return []
    table = [[f.summary, f.message[:200]] for f in figures.failures]
    return ["## Failed configurations", "", _table(["what", "detail"], table), ""]


def recommendations_section(figures: Figures) -> list[str]:
    if not figures.recommendations:
        return []
    return ["## Recommendations", "", *[f"- {r.text}." for r in figures.recommendations], ""]


def environment_section(results: Results) -> list[str]:
    env = results.environment
    rows: list[tuple[str, Any]] = [
        ("host", env.host),
        ("platform", env.platform),
        ("CPU", env.cpu),
        ("Python", env.python),
        ("NVIDIA driver", env.driver_version),
        ("CUDA (driver)", env.cuda_driver_version),
        ("TensorFlow", env.tensorflow),
        ("TensorFlow built with CUDA / cuDNN", env.tf_build),
        ("Keras", env.keras),
        ("NCCL", env.nccl),
        ("devices", "; ".join(env.devices or [])),
        ("cross-device ops", env.cross_device_ops),
    ]
    out = [
        "## Environment",
        "",
        _table(["", ""], [[k, "n/a" if v in (None, "") else v] for k, v in rows]),
        "",
    ]
    if env.gpus:
        gpus = [
            [
                g.index,
                g.name,
                f"{(g.memory_total_mib or 0) * 1024**2 / 1e9:.1f}",
                g.compute_capability,
                g.pci_bus_id,
                g.display_active,
            ]
            for g in env.gpus
        ]
        headers = ["NVML index", "name", "memory (GB)", "compute capability", "PCI bus", "display"]
        out += ["GPU inventory (NVML):", "", _table(headers, gpus), ""]
    return out


def _data_description(results: Results) -> str:
    if results.data:
        return f"data {results.data} (the trainer's own loading and pipeline)"
    size = results.image_size
    return f"synthetic {size}x{size}x3 images" if size else "synthetic data"


def _harness_line(harness: Harness) -> list[str]:
    if harness.fraction is None:
        return []
    return [
        f"- Harness: {harness.fraction:.0%} of the sweep's {harness.wall_seconds or 0:.1f} s wall "
        f"time went to measured or warm-up steps ({harness.benchmark_seconds or 0:.1f} s); the rest "
        f"to starting workers ({harness.worker_start_seconds or 0:.1f} s) and stopping them "
        f"({harness.close_seconds or 0:.1f} s), building models and tracing steps "
        f"({harness.prepare_seconds or 0:.1f} s), pytest and the IPC (the report is drawn after). "
        "The starts and tracing cost the same whatever the sweep's length: more --steps or --rounds "
        "raise the share (nothing is asserted on it: the figures above do not depend on it)."
    ]


def method_section(results: Results, figures: Figures) -> list[str]:
    m = results.method
    lines = [
        "## How these numbers were measured",
        "",
        "- Each configuration ran in a long-lived worker process per device count (TensorFlow starts "
        "once per count). Building the model and tracing the step (the first step) are not timed.",
        f"- Training: {m.warmup_steps} warm-up steps (one warm-up round, excluded), then "
        f"{m.rounds} rounds of {m.steps_per_round} steps. Each round is timed inside the "
        "worker with time.perf_counter() and ends with a host sync on the loss; samples/s = global "
        "batch x steps / round time.",
        "- Input pipeline: the same warm-up and rounds, fetching batches without a model.",
        f"- All-reduce: one warm-up round, then {m.rounds} rounds of up to "
        f"{m.allreduce_iters} chained all-reduces (fewer for large messages: "
        f"{format_bytes(m.allreduce_bytes_per_round or 0)} per round at most), "
        f"{m.allreduce_unroll or 1} to each call of a traced function, each taking the result of "
        "the one before as its input.",
        "- Statistic: the median over rounds. 95% CI: the distribution-free interval of the median "
        "from order statistics when there are at least 6 rounds, else Student's t interval of the mean. "
        "CV = standard deviation / mean of the per-round rates.",
        f"- Model {results.model}; scaling mode {results.scaling}; random seed "
        f"{m.seed}; {_data_description(results)}.",
    ]
    if figures.variants:
        lines.append(
            "- Variants: training ran for every combination of the axes, each in the worker of its "
            "cross-device ops (one process per device count and cross-device ops); the all-reduce ran "
            "per cross-device ops; the input pipeline, which depends on no axis, once per device "
            "count. The scaling tables and plots above are the baseline variant's."
        )
    return [*lines, *_harness_line(figures.harness), ""]


def render(results: Results, figures: Figures, plots: list[str]) -> str:
    unit = figures.unit
    lines = [f"# {figures.title}", ""]
    if not results.complete:
        lines += ["**Incomplete run**: the sweep was interrupted; the figures cover what finished.", ""]
    if results.workers:
        lines += [
            f"Measured across {results.workers} workers (MultiWorkerMirroredStrategy), every case on all of "
            f"them: {unit} counts are per worker; global batches, samples/s and the all-reduce's ranks "
            f"(busbw) are the cluster's, its ring crossing the network between workers.",
            "",
        ]
    if results.device_kind != "gpu":
        lines += [
            f"These {unit}s are logical devices carved from one CPU: they share its cores, so the "
            "figures test the suite and the strategy, not GPU scaling.",
            "",
        ]
    lines += ["## Training throughput", "", *throughput_section(figures, results)]
    lines += bottleneck_sections(results, figures) + peak_section(figures)
    lines += variants_section(figures)
    lines += allreduce_section(figures) + input_section(figures) + utilization_section(figures)
    lines += failures_section(figures) + recommendations_section(figures)
    if plots:
        lines += ["## Plots", ""]
        for name in plots:
            lines += [f"![{PLOT_TITLES.get(name, name)}]({name})", ""]
    lines += environment_section(results) + method_section(results, figures)
    return "\n".join(lines).rstrip() + "\n"

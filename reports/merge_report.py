"""The report of a merge of runs on different cluster sizes (reports/merge.py): scaling.md with the
runs, throughput and efficiency per batch and devices per worker against the fewest workers, the
all-reduce's bus bandwidth per cluster size, and two PNG plots; written atomically beside the
merged results.json."""

from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from common.files import write_bytes
from reports.merge import BandwidthPoint, Point, bandwidth_points, points
from reports.plots import _figure, _png
from reports.recommend import EFFICIENCY_TARGET
from reports.results import Results, format_bytes
from reports.write import RESULTS_FILE, check_report_dir

PLOTS = {
    "throughput-across-runs.png": "Throughput against the number of workers",
    "efficiency-across-runs.png": "Scaling efficiency against the fewest workers",
}


def _label(point: Point, unit: str) -> str:
    return f"batch {point.batch_per_gpu} per {unit}, {point.gpus} {unit}(s) per worker"


def render(results: Results, plots: list[str]) -> str:
    unit = results.unit
    pts = points(results)
    lines = [f"# Scaling across runs: {results.model} on {unit}s, {len(results.runs)} cluster sizes", ""]
    if not all(run.complete for run in results.runs):
        lines += ["**Incomplete runs** among these: their figures cover what finished.", ""]
    runs = [[run.source, run.workers, run.host or "?", run.created_at or "?"] for run in results.runs]
    lines += ["## Runs", "", _table(["results", "workers", "host (chief)", "created"], runs), ""]
    lines += [
        "## Training throughput",
        "",
        f"Weak scaling: the batch per {unit} is fixed, so W workers at ideal scaling reach W / W0 times "
        "the rate of the fewest workers W0 that ran the same configuration; efficiency = "
        "T(W) / ((W / W0) x T(W0)). Samples/s: median over rounds, with its 95% confidence interval.",
        "",
    ]
    rows = [
        [
            p.batch_per_gpu,
            p.gpus,
            p.workers,
            p.devices,
            f"{p.samples_per_sec.median:,.0f}",
            _ci(p),
            f"{p.speedup:.2f}x",
            f"{p.efficiency:.0%}" + (" (below target)" if round(p.efficiency, 2) < EFFICIENCY_TARGET else ""),
        ]
        for p in pts
    ]
    headers = [f"batch per {unit}", f"{unit}s per worker", "workers", f"{unit}s", "samples/s", "95% CI"]
    lines += [_table([*headers, "speedup", "efficiency"], rows), ""]
    lines += _bandwidth(bandwidth_points(results), unit)
    lines += [f"![{PLOTS[name]}]({name})" for name in plots]
    lines += [
        "",
        f"Made by `python -m reports merge` from the runs above; each run's own harness timing, environment "
        f"and variants are in its own report. Below {EFFICIENCY_TARGET:.0%} efficiency the network between "
        "the nodes is the first suspect: compare the all-reduce's bus bandwidth above with the local one.",
        "",
    ]
    return "\n".join(lines)


def _ci(p: Point) -> str:
    s = p.samples_per_sec
    return f"[{s.ci_low:,.0f}, {s.ci_high:,.0f}]" if s.ci_low is not None and s.ci_high is not None else "n/a"


def _bandwidth(bw: list[BandwidthPoint], unit: str) -> list[str]:
    if not bw:
        return []
    rows = [[b.gpus, b.workers, b.ranks, f"{b.busbw_gbps:.3g}"] for b in bw]
    return [
        f"## All-reduce, {format_bytes(bw[0].bytes)} (the largest message every run measured)",
        "",
        "Bus bandwidth (nccl-tests' definition, every device of every worker a rank): on one worker it "
        "is the local links', across workers it includes the network.",
        "",
        _table([f"{unit}s per worker", "workers", "ranks", "busbw GB/s"], rows),
        "",
    ]


def _table(headers: list[str], rows: list[list[object]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def render_plots(results: Results) -> dict[str, bytes]:
    """Throughput and efficiency against the number of workers, a line per configuration."""
    pts = points(results)
    lines: dict[str, list[Point]] = {}
    for p in pts:
        lines.setdefault(_label(p, results.unit), []).append(p)
    lines = {k: v for k, v in lines.items() if len(v) > 1}
    if not lines:
        return {}
    workers = sorted({p.workers for p in pts})
    out = {}
    axes = (("throughput-across-runs.png", "samples/s (median)"), ("efficiency-across-runs.png", ""))
    for name, ylabel in axes:
        plt, (fig, ax) = _figure()
        for label, line in lines.items():
            ys = [p.samples_per_sec.median if ylabel else p.efficiency for p in line]
            ax.plot([p.workers for p in line], ys, marker="o", label=label)
        if not ylabel:
            ax.axhline(EFFICIENCY_TARGET, linestyle="--", color="grey", alpha=0.6)
            ax.set_ylim(bottom=0)
        ax.set_xticks(workers)
        ax.set_xlabel("workers (nodes)")
        ax.set_ylabel(ylabel or "efficiency (1 = linear)")
        ax.set_title(PLOTS[name])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        out[name] = _png(plt, fig)
    return out


def write_merged(results: Results, out_dir: str | Path, write_results: bool = True) -> list[Path]:
    """scaling.md, the plots and (unless re-rendering it) the merged results.json, atomically."""
    out = Path(out_dir)
    check_report_dir(out)
    pngs = render_plots(results)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in pngs.items():
        write_bytes(out / name, png)
        written.append(out / name)
    texts = {"scaling.md": render(results, [name for name in PLOTS if name in pngs])}
    if write_results:
        texts[RESULTS_FILE] = json.dumps(results.to_json(), indent=2) + "\n"
    for name, text in texts.items():
        write_bytes(out / name, text.encode("utf-8"))
        written.append(out / name)
    return written

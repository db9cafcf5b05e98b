"""PNG plots of the figures: throughput with the ideal line, efficiency per batch size, busbw per
message size. Each returns PNG bytes, or None when there is nothing to draw."""

from __future__ import annotations

import io
from typing import Any

from reports.figure_rows import Figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display; must be chosen before pyplot is imported
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(7, 4.5), dpi=100)


def _png(plt: Any, fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def throughput(figures: Figures) -> bytes | None:
    drawn = [s for s in figures.series if any(p.samples_per_sec is not None for p in s.points)]
    if not drawn:
        return None
    plt, (fig, ax) = _figure()
    for s in drawn:
        xs = [p.gpus for p in s.points if p.samples_per_sec is not None]
        ys = [p.samples_per_sec for p in s.points if p.samples_per_sec is not None]
        (line,) = ax.plot(xs, ys, marker="o", label=f"{s.scaling}: {s.label}")
        ideal = [(p.gpus, p.ideal_samples_per_sec) for p in s.points if p.ideal_samples_per_sec]
        if ideal:
            ax.plot(*zip(*ideal, strict=True), linestyle="--", color=line.get_color(), alpha=0.5)
    counts = sorted({p.gpus for s in drawn for p in s.points})
    ax.set_xticks(counts)
    ax.set_xlabel(f"{figures.unit}s")
    ax.set_ylabel("samples/s (median)")
    ax.set_title("Training throughput (dashed: ideal linear scaling)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _png(plt, fig)


def efficiency(figures: Figures) -> bytes | None:
    drawn = [s for s in figures.series if any(p.efficiency is not None for p in s.points)]
    if not drawn or not any(p.gpus != s.base_gpus for s in drawn for p in s.points):
        return None
    from reports.recommend import EFFICIENCY_TARGET

    plt, (fig, ax) = _figure()
    for s in drawn:
        pts = [(p.gpus, p.efficiency * 100) for p in s.points if p.efficiency is not None]
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{s.scaling}: {s.label}")
    ax.axhline(EFFICIENCY_TARGET * 100, color="grey", linestyle=":", label=f"{EFFICIENCY_TARGET:.0%} target")
    ax.set_xticks(sorted({p.gpus for s in drawn for p in s.points}))
    ax.set_xlabel(f"{figures.unit}s")
    ax.set_ylabel("scaling efficiency (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("Scaling efficiency T(N) / (N x T(1))")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _png(plt, fig)


def allreduce(figures: Figures) -> bytes | None:
    rows = figures.allreduce
    if not rows:
        return None
    plt, (fig, ax) = _figure()
    for n in sorted({r.gpus for r in rows}):
        mine = [r for r in rows if r.gpus == n]
        ax.plot(
            [r.bytes for r in mine],
            [r.busbw_gbps.median for r in mine],
            marker="o",
            label=f"{n} {figures.unit}s",
        )
    links = {r.link_gbps_per_direction for r in rows if r.link_gbps_per_direction}
    for link in links:
        ax.axhline(link, color="grey", linestyle=":", label=f"link {link:g} GB/s per direction")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes per replica)")
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title("All-reduce bus bandwidth (nccl-tests definition)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _png(plt, fig)


def render_all(figures: Figures) -> dict[str, bytes]:
    """File name -> PNG bytes, for the plots there is something to draw in."""
    out = {}
    for name, draw in (
        ("throughput.png", throughput),
        ("efficiency.png", efficiency),
        ("allreduce.png", allreduce),
    ):
        png = draw(figures)
        if png is not None:
            out[name] = png
    return out

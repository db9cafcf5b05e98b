"""`gpudiag bandwidth`: nccl-tests' all_reduce_perf for TensorFlow. The strategy's all-reduce (sum,
float32, out-of-place) over the selected GPUs, or N CPU logical devices, for message sizes doubling
from --min-bytes to --max-bytes; per size the time, algbw = bytes / time and busbw = algbw x
2(n-1)/n (nccl-tests' definitions, doc/PERFORMANCE.md), and where the link between the GPUs is
known (NVLink generation and link count, PCIe generation and width) busbw as a fraction of one
direction of that link's peak (diagnostics.knowledge). Then a one-line verdict.

This side never imports TensorFlow nor the trainer: it starts `python -m training.children.bandwidth`
by name with the resolved devices (`common.child`), and the child times each size with the one
all-reduce timer the sweep and the trainer use (training.loop.allreduce).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

from common import child
from common.cli import UsageError
from diagnostics import knowledge
from diagnostics.inventory import Gpu, Inventory
from diagnostics.selection import SelectionOptions, device_args

BANDWIDTH_MODULE = "training.children.bandwidth"
MIN_BYTES = 8
MAX_BYTES_GPU = 256 << 20  # nccl-tests' usual -e 256M
MAX_BYTES_CPU = 4 << 20  # CPU logical devices share host memory: larger sizes only take longer


class BandwidthError(RuntimeError):
    """The child did not measure: it crashed, ran out of memory or time, or said it failed (exit 1)."""


def sizes(min_bytes: int, max_bytes: int) -> list[int]:
    """min_bytes, doubling, up to max_bytes (included when on the way)."""
    out, size = [], min_bytes
    while size <= max_bytes:
        out.append(size)
        size *= 2
    return out


def bus_factor(n: int) -> float:
    """busbw / algbw for an all-reduce over n ranks: each sends and receives 2(n-1)/n of the data."""
    return 2 * (n - 1) / n


@dataclass(frozen=True)
class LinkPeak:
    name: str  # "PCIe 4.0 x16", "NVLink 4.0 x18"
    gbps: float  # one direction, 10^9 bytes/s
    source: str


@dataclass(frozen=True)
class Row:
    bytes: int
    seconds: float
    iters: int
    algbw_gbps: float
    busbw_gbps: float
    link_fraction: float | None  # busbw / the link's peak, where it is known


def make_row(nbytes: int, seconds: float, iters: int, n: int, peak: LinkPeak | None) -> Row:
    algbw = nbytes / seconds / 1e9
    busbw = algbw * bus_factor(n)
    return Row(nbytes, seconds, iters, algbw, busbw, busbw / peak.gbps if peak else None)


def link_peak(inventory: Inventory | None, gpus: Sequence[Gpu]) -> LinkPeak | None:
    """The peak of the slowest link between the GPUs: NVLink where every pair has it (the fewest
    links of any pair), else PCIe (the lowest generation and width any GPU trains to at most; a
    link trained lower is `gpudiag check`'s finding). None where the inventory does not tell."""
    if inventory is None or len(gpus) < 2:
        return None
    links = [inventory.link(a.index, b.index) for a, b in combinations(gpus, 2)]
    counts = [lk.nvlink_count for lk in links if lk is not None and lk.topology == "nvlink"]
    nvlink = knowledge.NVLINK_PER_LINK_GBPS.get(gpus[0].compute_capability or "")
    if len(counts) == len(links) and None not in counts and nvlink is not None:
        count = min(c for c in counts if c is not None)
        generation, per_link, source = nvlink
        return LinkPeak(f"NVLink {generation} x{count}", per_link * count, source)
    pcies = [g.pcie for g in gpus]
    gens = [p.gen_max or p.gen_current for p in pcies if p is not None]
    widths = [p.width_max or p.width_current for p in pcies if p is not None]
    if len(gens) < len(gpus) or None in gens or None in widths or len(widths) < len(gpus):
        return None
    gen, width = min(g for g in gens if g), min(w for w in widths if w)
    if gen not in knowledge.PCIE_X16_GBPS:
        return None
    x16, source = knowledge.PCIE_X16_GBPS[gen]
    return LinkPeak(f"PCIe {gen}.0 x{width}", x16 * width / 16, source)


def human(nbytes: int) -> str:
    """8 B, 64 KiB, 256 MiB: the binary units --min-bytes and --max-bytes take."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def verdict(rows: Sequence[Row], n: int, where: str, peak: LinkPeak | None) -> str:
    """One line: the best busbw, and against the link's peak where it is known."""
    if not rows:
        return "no size was measured"
    best = max(rows, key=lambda r: (r.busbw_gbps, r.bytes))
    head = f"busbw {best.busbw_gbps:.3g} GB/s at {human(best.bytes)} over {n} {where}"
    if peak is None:
        known = "CPU logical devices share host memory" if "CPU" in where else "the link is unknown"
        return f"{head}: no link peak to compare with ({known})"
    share = f"{head} = {best.busbw_gbps / peak.gbps:.0%} of {peak.name} ({peak.gbps:.4g} GB/s per direction)"
    expected = knowledge.BUSBW_EXPECTED_FRACTION
    if best.busbw_gbps >= expected * peak.gbps:
        return f"{share}: as expected (nccl-tests reaches {expected:.0%} or more)"
    return (
        f"{share}: below the {expected:.0%} nccl-tests reaches; run `gpudiag check` "
        "(PCIe ACS, P2P, link width and generation)"
    )


def measure(
    command: Sequence[str], n: int, peak: LinkPeak | None, timeout: float
) -> tuple[list[Row], list[str]]:
    """Run the child; its rows and the devices it set up. Raises BandwidthError if it did not finish."""
    env = child.child_environment(os.environ)
    outcome = child.run(command, timeout, env)
    rows = [
        make_row(m["bytes"], m["seconds"], m["iters"], n, peak)
        for m in outcome.messages
        if m.get("event") == "size"
    ]
    devices: list[str] = next((m["devices"] for m in outcome.messages if m.get("event") == "devices"), [])
    said = next((m["message"] for m in outcome.messages if m.get("event") == "error"), "")
    if outcome.kind != child.OK:
        what = {child.TIMEOUT: f"did not finish within {timeout:g} s (--timeout)"}.get(
            outcome.kind, f"ended ({outcome.kind}, exit {outcome.returncode})"
        )
        done = f" after {len(rows)} size(s)" if rows else ""
        tail = said or " | ".join(outcome.stderr_lines[-3:])
        raise BandwidthError(f"the all-reduce child {what}{done}{': ' + tail if tail else ''}")
    return rows, devices


def _devices(ns: argparse.Namespace, options: SelectionOptions) -> tuple[list[Gpu], Inventory | None]:
    if ns.cpu_replicas is not None:
        return [], None
    from diagnostics.checks import make_context

    ctx = make_context(options)
    if ctx.selection is None:
        raise BandwidthError(f"{ctx.nvml_error}: no GPU to measure (--cpu-replicas N measures CPU devices)")
    return list(ctx.selection.selected), ctx.inventory


def main(ns: argparse.Namespace, options: SelectionOptions) -> int:
    """`gpudiag bandwidth`: 0 measured, 1 the child failed or no GPU to read, 2 bad input."""
    gpus, inventory = _devices(ns, options)
    n = ns.cpu_replicas if ns.cpu_replicas is not None else len(gpus)
    where = "CPU logical devices" if ns.cpu_replicas is not None else "GPUs"
    if n < 2:
        raise UsageError(f"{n} {where[:-1]}(s) selected: nothing to all-reduce (select 2 or more)")
    low = ns.min_bytes or MIN_BYTES
    high = ns.max_bytes or (MAX_BYTES_CPU if ns.cpu_replicas is not None else MAX_BYTES_GPU)
    if low > high:
        raise UsageError(f"--min-bytes {human(low)} is above --max-bytes {human(high)}")
    peak = link_peak(inventory, gpus)
    command = child.module_command(
        BANDWIDTH_MODULE, *device_args(gpus, ns.cpu_replicas), "--min-bytes", str(low),
        "--max-bytes", str(high), "--iters", str(ns.iters), "--warmup-iters", str(ns.warmup_iters),
    )  # fmt: skip
    rows, devices = measure(command, n, peak, ns.timeout)
    line = verdict(rows, n, where, peak)
    if ns.json:
        link = asdict(peak) if peak else None
        data = {"rows": [asdict(r) for r in rows], "replicas": n, "devices": devices, "link": link}
        print(json.dumps({**data, "verdict": line}, indent=2))
        return 0
    iters = rows[0].iters if rows else ns.iters
    print(
        f"gpudiag bandwidth: all-reduce (sum, float32, out-of-place) over {n} {where}, "
        f"{iters} timed after {ns.warmup_iters} warm-up per size"
    )
    print(render(rows, peak))
    print(line)
    return 0


def render(rows: Sequence[Row], peak: LinkPeak | None) -> str:
    from tabulate import tabulate  # only the text output needs it

    headers = ["size", "bytes", "time (us)", "algbw (GB/s)", "busbw (GB/s)"]
    table: list[list[Any]] = [
        [human(r.bytes), r.bytes, f"{r.seconds * 1e6:.1f}", f"{r.algbw_gbps:.3f}", f"{r.busbw_gbps:.3f}"]
        for r in rows
    ]
    if peak is not None:
        headers.append(f"% of {peak.name}")
        for cells, r in zip(table, rows, strict=True):
            cells.append(f"{r.link_fraction:.0%}")
    return tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)

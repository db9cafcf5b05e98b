"""`gpudiag check | list | snapshot | monitor | compare | bandwidth`: argument parsing and rendering only.

Exit codes: 0 ready (no check failed), 1 a check failed (with --strict: or warned) or there is no
driver to read, 2 bad arguments or an unreadable inventory file. `compare`: 0 when no difference
between the snapshots breaks multi-worker training, 1 when one does, 2 for unusable input.
`bandwidth`: 0 measured, 1 the measuring child failed, 2 bad input or fewer than 2 devices. Errors
are one line on stderr, never a traceback (`common.cli.run_main`; GPUDIAG_DEBUG=1 shows a bug's).
`--inventory FILE` takes a snapshot or an `nvidia-smi -q -x` dump.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from common import files
from common.cli import Parser, UsageError, at_least, positive_number, run_main, size_in_bytes
from diagnostics.checks import Context, Finding, describe, make_context, registry, run_checks
from diagnostics.checks import summarize as summarize_findings
from diagnostics.inventory import load_inventory
from diagnostics.selection import SelectionOptions, add_selection_options

PROG = "gpudiag"


class _Parser(Parser):
    help_hint = True


def _selection_flags(p: argparse.ArgumentParser) -> None:
    add_selection_options(p.add_argument_group("GPU selection (the trainer's flags)").add_argument)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Is this machine ready for multi-GPU TensorFlow?")
    sub = parser.add_subparsers(dest="command", metavar="{check,list,snapshot,monitor,compare,bandwidth}")
    sub.required = True
    check = sub.add_parser("check", help="run every readiness check")
    check.add_argument(
        "--inventory",
        metavar="FILE",
        help="replay a snapshot or an nvidia-smi -q -x dump instead of this machine",
    )
    check.add_argument("--json", action="store_true", help="print only JSON on stdout")
    check.add_argument("--strict", action="store_true", help="warnings fail too (exit 1), for CI gates")
    check.add_argument("--deep", action="store_true", help="also run TensorFlow in a child process")
    check.add_argument("--deep-timeout", type=positive_number(), default=180.0, metavar="S")
    check.add_argument(
        "--cpu-replicas",
        type=at_least(1),
        metavar="N",
        help="--deep: run the probe on N logical CPU devices instead of the selected GPUs",
    )
    check.add_argument("--list-checks", action="store_true", help="list the checks and exit")
    _selection_flags(check)
    lst = sub.add_parser("list", help="every GPU and whether the trainer would select it")
    lst.add_argument("--inventory", metavar="FILE", help="a snapshot or an nvidia-smi -q -x dump")
    lst.add_argument("--json", action="store_true")
    _selection_flags(lst)
    snap = sub.add_parser("snapshot", help="write this machine (GPUs, software, environment) as JSON")
    snap.add_argument("-o", "--output", metavar="FILE", help="file to write (atomically); default stdout")
    snap.add_argument(
        "--inventory", metavar="FILE", help="convert this snapshot or nvidia-smi -q -x dump instead"
    )
    mon = sub.add_parser("monitor", help="sample GPU usage and flag imbalance")
    mon.add_argument("--interval", type=positive_number(), default=1.0, metavar="S")
    mon.add_argument("--duration", type=positive_number(), default=10.0, metavar="S")
    mon.add_argument("--csv", metavar="FILE")
    _selection_flags(mon)
    cmp = sub.add_parser(
        "compare", help="what differs between the nodes of a multi-worker run (their snapshots)"
    )
    cmp.add_argument("files", nargs="+", metavar="FILE", help="a `gpudiag snapshot` of each node")
    cmp.add_argument("--json", action="store_true", help="print only JSON on stdout")
    _selection_flags(cmp)
    bw = sub.add_parser(
        "bandwidth", help="all-reduce bus bandwidth per message size (nccl-tests' all_reduce_perf)"
    )
    bw.add_argument("--cpu-replicas", type=at_least(1), metavar="N", help="N CPU logical devices, not GPUs")
    bw.add_argument("--min-bytes", type=size_in_bytes, metavar="SIZE", help="smallest message (default 8)")
    bw.add_argument("--max-bytes", type=size_in_bytes, metavar="SIZE", help="largest (256M; 4M on CPU)")
    bw.add_argument("--iters", type=at_least(1), default=20, metavar="N", help="timed all-reduces per size")
    bw.add_argument("--warmup-iters", type=at_least(0), default=5, metavar="N")
    bw.add_argument("--json", action="store_true", help="print only JSON on stdout")
    bw.add_argument("--timeout", type=positive_number(), default=600.0, metavar="S")
    _selection_flags(bw)
    return parser


def _args(ns: argparse.Namespace) -> SelectionOptions:
    return SelectionOptions.from_namespace(ns).validate()


# -- rendering ---------------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[int | None]) -> str:
    from tabulate import tabulate  # only the text output needs it

    return tabulate(rows, headers=list(headers), tablefmt="simple_grid", maxcolwidths=list(widths))


def _text_widths() -> tuple[int, int]:
    columns = shutil.get_terminal_size((140, 24)).columns
    spare = max(columns - 45, 50)
    return int(spare * 0.55), int(spare * 0.45)


def summary_line(findings: Sequence[Finding]) -> str:
    counts = summarize_findings(findings)
    tally = ", ".join(f"{counts[s]} {s}" for s in ("pass", "warn", "fail", "skip"))
    if counts["fail"]:
        verdict = "NOT READY: fix the failures above"
    elif counts["warn"]:
        verdict = "ready, with warnings worth reading"
    else:
        verdict = "ready for multi-GPU training"
    return f"{len(findings)} findings: {tally}. {verdict}"


def _print_findings(findings: Sequence[Finding], ctx: Context) -> None:
    msg_w, fix_w = _text_widths()
    rows = [
        (f.check, f.status.upper(), ",".join(map(str, f.gpus)) or "-", f.message, f.remedy or "")
        for f in findings
    ]
    where = ctx.inventory.source if ctx.inventory is not None else "this machine"
    software = {
        "recorded": "; software as recorded in it",
        "replaying": "; it records no software, so this machine's is judged instead",
    }.get(ctx.stack_origin, "")
    print(f"gpudiag check on {'this machine' if where == 'live' else where}{software}")
    print(render_table(("check", "status", "GPUs", "message", "remedy"), rows, (None, None, 8, msg_w, fix_w)))
    print(summary_line(findings))


# -- commands ----------------------------------------------------------------------------------------


def cmd_check(ns: argparse.Namespace) -> int:
    if ns.list_checks:
        for check_id, check in registry(deep=True):
            print(f"{check_id:<20} {describe(check)}")
        return 0
    ctx = make_context(_args(ns), inventory_path=ns.inventory)
    if ns.deep:
        ctx = Context(**{**ctx.__dict__, "deep_timeout_s": ns.deep_timeout, "cpu_replicas": ns.cpu_replicas})
    findings = run_checks(ctx, deep=ns.deep)
    if ns.json:
        print(
            json.dumps(
                {"findings": [f.to_dict() for f in findings], "summary": summarize_findings(findings)},
                indent=2,
            )
        )
    else:
        _print_findings(findings, ctx)
        if ns.strict and any(f.status == "warn" for f in findings):
            print("--strict: warnings count as failures")
    failing = ("fail", "warn") if ns.strict else ("fail",)
    return 1 if any(f.status in failing for f in findings) else 0


def cmd_list(ns: argparse.Namespace) -> int:
    ctx = make_context(_args(ns), inventory_path=ns.inventory)
    if ctx.selection is None:
        if ns.json:
            print(json.dumps({"selected": [], "gpus": []}))
        print(f"{PROG}: {ctx.nvml_error}: no GPU to list", file=sys.stderr)
        return 1
    sel = ctx.selection
    if ns.json:
        gpus = [
            {
                "index": c.gpu.index,
                "name": c.gpu.name,
                "memory_total_mib": c.gpu.memory_total_mib,
                "display_active": c.gpu.display_active,
                "selected": c.selected,
                "reasons": list(c.reasons),
            }
            for c in sel.choices
        ]
        print(
            json.dumps({"selected": sel.selected_indices, "gpus": gpus, "notes": list(sel.notes)}, indent=2)
        )
        return 0
    rows = [
        (
            c.gpu.index,
            c.gpu.name,
            f"{c.gpu.memory_total_gb:.1f}",
            {True: "yes", False: "no", None: "?"}[c.gpu.display_active],
            "yes" if c.selected else "no",
            "; ".join(c.reasons) or "-",
        )
        for c in sel.choices
    ]
    print(
        render_table(
            ("GPU", "name", "GB", "display", "selected", "reasons"), rows, (None, 30, None, None, None, 70)
        )
    )
    chosen = ", ".join(map(str, sel.selected_indices)) or "none (the trainer would fall back to the CPU)"
    print(f"--device-mode {sel.mode}: selected GPUs {chosen}")
    for note in sel.notes:
        print(f"note: {note}")
    for warning in sel.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_snapshot(ns: argparse.Namespace) -> int:
    from diagnostics import nvml, snapshot

    if ns.inventory:
        inventory = load_inventory(ns.inventory)  # a conversion keeps the file's own (or no) software
    else:
        inventory = snapshot.take_snapshot(read_live=lambda: nvml.read_inventory())
    text = inventory.to_json()
    if ns.output:
        try:
            files.write_text(ns.output, text)
        except OSError as exc:
            raise UsageError(f"cannot write {ns.output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
    if inventory.nvml_error and not ns.inventory:
        where = f" to {ns.output}" if ns.output else ""
        what = "with the error, software and environment"
        print(f"{PROG}: {inventory.nvml_error}: snapshot written{where} {what}", file=sys.stderr)
        return 1
    if ns.output:
        print(f"{PROG}: inventory written to {ns.output}", file=sys.stderr)
    return 0


def cmd_monitor(ns: argparse.Namespace) -> int:
    from diagnostics import monitor
    from diagnostics.nvml import read_inventory

    def read() -> Any:
        return read_inventory(include_links=False, include_processes=False)

    from diagnostics.selection import Limits
    from diagnostics.stack import read_stack

    first = read()
    args = _args(ns)
    selection = args.select(first, Limits.of(os.environ, read_stack()))
    rows: list[monitor.Sample] = []
    print(monitor.HEADER, flush=True)
    try:
        for batch in monitor.sample_loop(read, ns.interval, ns.duration):
            rows.extend(batch)
            for sample in batch:
                print(monitor.format_row(sample), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl+C ends sampling early; the summary still counts
    if ns.csv:
        buffer = io.StringIO()
        monitor.write_csv(buffer, rows)
        try:
            files.write_text(ns.csv, buffer.getvalue())
        except OSError as exc:
            raise UsageError(f"cannot write {ns.csv}: {exc.strerror or exc}") from None
    verdict = monitor.imbalance(rows, selection.selected_indices)
    if verdict:
        print(f"warning: {verdict}")
    elif len(selection.selected) > 1:
        print(f"selected GPUs {', '.join(map(str, selection.selected_indices))}: usage balanced")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from diagnostics import compare

    result = compare.compare(compare.load_nodes(ns.files, _args(ns)))
    print(json.dumps(result.to_dict(), indent=2) if ns.json else result.render())
    return 1 if result.breaks else 0


def cmd_bandwidth(ns: argparse.Namespace) -> int:
    from diagnostics import bandwidth

    try:
        return bandwidth.main(ns, _args(ns))
    except bandwidth.BandwidthError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


COMMANDS = {
    "check": cmd_check,
    "list": cmd_list,
    "snapshot": cmd_snapshot,
    "monitor": cmd_monitor,
    "compare": cmd_compare,
    "bandwidth": cmd_bandwidth,
}


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl+C is the user's own doing: 130, without a line to say so
    return run_main(lambda: _run(argv), prog=PROG, interrupted=None)


def _run(argv: Sequence[str] | None) -> int:
    from diagnostics.nvml import NvmlUnavailable

    ns = build_parser().parse_args(argv)
    try:
        return COMMANDS[ns.command](ns)
    except NvmlUnavailable as exc:
        print(f"{PROG}: {exc}: install the NVIDIA driver and check that `nvidia-smi` works", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

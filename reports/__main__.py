"""`python -m reports RESULTS.json [--out DIR]`: re-render a saved sweep's report (exit 0 / 2).
`python -m reports compare BASE.json NEW.json [--threshold 5%]`: compare two sweeps (exit 0 when no
case regressed, 1 when one did, 2 for bad input).
`python -m reports merge RUN1.json RUN2.json ... -o DIR`: one report from runs on different cluster
sizes (exit 0; 2 for runs that do not belong together, naming the difference). Bad flags and
unusable files are one line on stderr (`common.cli.run_main`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import Parser, from_value_error, run_main
from reports.compare import DEFAULT_THRESHOLD, compare, parse_threshold, render
from reports.merge import merge
from reports.merge_report import write_merged
from reports.results import load, read
from reports.write import write_report


def compare_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="python -m reports compare",
        description="Compare two sweeps' results.json (or scaling.json) files case by case. Exit 1 "
        "when a case regressed: its rate fell by more than the threshold and the two 95%% "
        "confidence intervals do not overlap, or it failed in NEW; 0 otherwise; 2 for bad input.",
    )
    parser.add_argument("base", metavar="BASE.json")
    parser.add_argument("new", metavar="NEW.json")
    parser.add_argument(
        "--threshold",
        type=from_value_error(parse_threshold, "--threshold"),
        default=DEFAULT_THRESHOLD,
        metavar="PCT",
        help=f"smallest change that counts, in percent (default {DEFAULT_THRESHOLD:.0%})",
    )
    args = parser.parse_args(argv)
    names = (args.base, args.new)
    comparison = compare(read(args.base), read(args.new), args.threshold, names)
    sys.stdout.write(render(comparison, names))
    return 1 if comparison.regressed else 0


def merge_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="python -m reports merge",
        description="One scaling report from sweeps run on different cluster sizes (1 node, 2 nodes, "
        "...): throughput and efficiency against the fewest workers, per batch. The runs must have "
        "measured the same model, data, batch sizes and variants with the same software. Writes "
        "DIR/results.json (the merge: `python -m reports compare` reads it), DIR/scaling.md and plots.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN.json", help="results.json or scaling.json files")
    parser.add_argument("-o", "--out", metavar="DIR", required=True, help="output folder")
    args = parser.parse_args(argv)
    merged = merge([(name, read(name)) for name in args.runs])
    for path in write_merged(merged, args.out):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return run_main(lambda: compare_main(argv[1:]))
    if argv[:1] == ["merge"]:
        return run_main(lambda: merge_main(argv[1:]))
    return run_main(lambda: render_main(argv))


def render_main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="python -m reports",
        description="Render scaling.md, scaling.json and the plots from a sweep's results.json "
        "(or from a scaling.json, which carries its results). "
        "`python -m reports compare BASE.json NEW.json` compares two runs; `python -m reports merge "
        "RUN1.json RUN2.json ... -o DIR` merges runs on different cluster sizes.",
    )
    parser.add_argument("results", metavar="RESULTS.json")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the results file's folder)")
    args = parser.parse_args(argv)
    results = load(args.results)
    out = Path(args.out) if args.out else Path(args.results).absolute().parent
    # a merge of cluster sizes has its own report (its results.json written only to another folder)
    if results.runs:
        written = write_merged(results, out, write_results=bool(args.out))
    else:
        written = write_report(results, out)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

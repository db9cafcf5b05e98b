"""`python -m reports RESULTS.json [--out DIR]`: re-render a saved sweep's report (exit 0 / 2)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reports.results import ResultsError, load
from reports.write import ReportDirError, write_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reports",
        description="Render scaling.md, scaling.json and the plots from a sweep's results.json "
        "(or from a scaling.json, which carries its results).",
    )
    parser.add_argument("results", metavar="RESULTS.json")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the results file's folder)")
    args = parser.parse_args(argv)
    try:
        results = load(args.results)
        out = Path(args.out) if args.out else Path(args.results).absolute().parent
        written = write_report(results, out)
    except (ResultsError, ReportDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

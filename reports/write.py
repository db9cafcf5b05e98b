"""Write the report (scaling.md, scaling.json, PNG plots) into a folder, atomically.

Every file is written whole beside its target and renamed over it, so a reader never sees half a
file and an interrupted write leaves the previous report as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import write_bytes
from reports import markdown, plots
from reports.figures import report_figures
from reports.results import REPORT_SCHEMA, Results, validate

REPORT_FILES = ("scaling.md", "scaling.json")
RESULTS_FILE = "results.json"


class ReportDirError(UserError):
    """The report folder cannot be written."""


def check_report_dir(path: str | Path) -> None:
    """Raise ReportDirError unless `path` is, or can be created as, a writable folder. Creates nothing."""
    target = Path(path).absolute()
    if target.exists():
        if not target.is_dir():
            raise ReportDirError(f"report directory {path} exists and is not a folder")
        if not os.access(target, os.W_OK | os.X_OK):
            raise ReportDirError(f"report directory {path} is not writable")
        return
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ReportDirError(f"report directory {path} cannot be created: {parent} is not writable")


def write_report(
    results: Results | dict[str, Any], out_dir: str | Path, write_results: bool = True
) -> list[Path]:
    """Render and write the report; returns the paths written. `results`: typed, or as JSON.

    The report shows `results` as given: the sweep puts its harness timing in before calling this.
    """
    out = Path(out_dir)
    check_report_dir(out)
    if not isinstance(results, Results):
        results = validate(results)
    figures = report_figures(results)
    pngs = plots.render_all(figures)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in pngs.items():
        write_bytes(out / name, png)
        written.append(out / name)
    for stale in set(markdown.PLOT_TITLES) - set(pngs):  # a plot an earlier run drew, not this one
        (out / stale).unlink(missing_ok=True)
    text_files = {
        "scaling.json": json.dumps(
            {
                "schema": REPORT_SCHEMA,
                "figures": figures.to_json(),
                "plots": sorted(pngs),
                "results": results.to_json(),
            },
            indent=2,
        )
        + "\n",
        "scaling.md": markdown.render(results, figures, sorted(pngs, key=list(markdown.PLOT_TITLES).index)),
    }
    if write_results:
        text_files[RESULTS_FILE] = json.dumps(results.to_json(), indent=2) + "\n"
    for name, text in text_files.items():
        write_bytes(out / name, text.encode("utf-8"))
        written.append(out / name)
    return written

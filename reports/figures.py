"""Every figure of the report in one JSON-ready dict (scaling.json's "figures"): the measurements
(reports.analysis) and the recommendations argued from them (reports.recommend).

Kept apart from both so that recommend depends on analysis and nothing depends back.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from reports import analysis, recommend


def report_figures(results: dict[str, Any]) -> dict[str, Any]:
    figures = analysis.analyse(results)
    figures["recommendations"] = [asdict(r) for r in recommend.recommend(results, figures)]
    return figures

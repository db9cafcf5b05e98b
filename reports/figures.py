"""Every figure of the report (scaling.json's "figures"): the measurements
(reports.analysis) and the recommendations argued from them (reports.recommend).

Kept apart from both so that recommend depends on analysis and nothing depends back.
"""

from __future__ import annotations

from reports import analysis, recommend
from reports.figure_rows import Figures
from reports.results import Results


def report_figures(results: Results) -> Figures:
    figures = analysis.analyse(results)
    figures.recommendations = recommend.recommend(results, figures)
    return figures

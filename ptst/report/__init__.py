"""Reports: results.json, report.md, a self-contained report.html with figures, and terminal tables.

Every report is a pure function of a `Results` (the public contract), so `ptst report DIR` rebuilds identical files
from the run store alone. Modules: `grids` (the train × test grids and their cell text), `views` (PTST summary,
categories, checkpoints, agreement, spec), `plots` (heatmaps, progress lines), `markdown`, `html`, `terminal`,
`files` (atomic writes). Simulated results (mock backend or judge) carry a banner on the first line of every output
and a label on every figure.
"""

from ptst.report.files import write_reports, write_run_reports
from ptst.report.grids import (
    BASE_ROW,
    SIMULATED_BANNER,
    Cell,
    Grid,
    build_grids,
    cell_text,
)
from ptst.report.html import render_html
from ptst.report.markdown import render_markdown
from ptst.report.plots import heatmap_png, progress_png
from ptst.report.terminal import print_tables

__all__ = [
    "BASE_ROW", "SIMULATED_BANNER", "Cell", "Grid", "build_grids", "cell_text", "heatmap_png", "print_tables",
    "progress_png", "render_html", "render_markdown", "write_reports", "write_run_reports",
]

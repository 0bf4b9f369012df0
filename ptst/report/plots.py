"""Figures: grid heatmaps and training-progress line plots, as PNG bytes.

matplotlib's object API on an Agg canvas: no pyplot global state and no display, so it is safe in threads and
headless CI; matplotlib is imported inside the functions so importing ptst stays light. A figure of simulated
results says so in its title and across its face, so a copied image cannot pass for a measurement.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from ptst.report.grids import MISSING, PTST_MARK, Grid, col_label, row_label
from ptst.report.views import Progress
from ptst.results import JobRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIMULATED_TITLE = "SIMULATED"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _watermark(fig: Figure) -> None:
    """A faint diagonal SIMULATED across every plot area (over the data, so cropping cannot remove it)."""
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        ax.text(0.5, 0.5, SIMULATED_TITLE, transform=ax.transAxes, fontsize=22, fontweight="bold", color="#b30000",
                alpha=0.22, rotation=25, ha="center", va="center", zorder=10)


def _cmap(kind: str = "safety"):
    from matplotlib import colormaps

    # Red for attack success (high is bad), blue for task scores (high is good); not evaluated: neutral grey,
    # never mistaken for 0%.
    return colormaps["Reds" if kind == "safety" else "Blues"].with_extremes(bad="#d9d9d9")


def heatmap_figure(grid: Grid, vmax: float = 100.0, simulated: bool = False) -> Figure:
    """Heatmap of a grid (colour = value in %), PTST cells hatched, diagonal outlined."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    nr, nc = len(grid.rows), len(grid.cols)
    data = np.full((nr, nc), np.nan)
    for i, r in enumerate(grid.rows):
        for j, c in enumerate(grid.cols):
            cell = grid.cells.get((r, c))
            if cell is not None and cell.value is not None:
                data[i, j] = 100 * cell.value

    # Fixed margins in inches (labels, colorbar, legend) around fixed-size cells: tight layout engines would cost
    # a second draw per figure, and a report may hold dozens of heatmaps.
    row_chars = max(len(row_label(r)) for r in grid.rows)
    col_chars = max(len(col_label(grid, c)) for c in grid.cols)
    left, right, top = 0.45 + 0.062 * row_chars, 1.2, 0.45
    bottom = 0.85 + 0.031 * col_chars
    # Small grids (one row or column) get a floor so the colorbar and labels stay legible.
    cells_h = max(0.45 * nr, 1.2)
    width, height = max(left + 1.05 * nc + right, 4.6), bottom + cells_h + top
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=_cmap(grid.kind), vmin=0.0, vmax=max(vmax, 1e-9), aspect="auto")
    fig.colorbar(im, ax=ax, label=f"{grid.metric} %", fraction=0.04, pad=0.03)
    ax.set_xticks(range(nc), [col_label(grid, c) for c in grid.cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(nr), [row_label(r) for r in grid.rows], fontsize=8)
    ax.set_xlabel("test template", fontsize=9)
    ax.set_ylabel("train template", fontsize=9)
    judge = f" [{grid.judge}]" if grid.show_judge and grid.judge else ""
    ax.set_title((f"{SIMULATED_TITLE} · " if simulated else "") + f"{grid.backend} · {grid.name}{judge}", fontsize=10)
    for i, r in enumerate(grid.rows):
        for j, c in enumerate(grid.cols):
            v = data[i, j]
            mark = grid.mark(r, c)
            label = MISSING if np.isnan(v) else f"{v:.1f}"
            if mark == "ptst":
                label += f"\n{PTST_MARK}"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="#1b7837", lw=2))
            elif mark == "diag":
                ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="black", lw=2.2))
            dark = not np.isnan(v) and v > 0.6 * vmax
            if mark == "ptst":  # keep the number readable over the hatching
                box = {"facecolor": "white", "alpha": 0.75, "linewidth": 0, "pad": 1.0}
                ax.text(j, i, label, ha="center", va="center", fontsize=8, color="black", bbox=box)
            else:
                ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.legend(
        handles=[
            Patch(facecolor="none", edgecolor="#1b7837", hatch="//", label="PTST (train w/o, test with safety prompt)"),
            Patch(facecolor="none", edgecolor="black", lw=2, label="same template"),
        ],
        loc="lower left", bbox_to_anchor=(0.01, 0.0), ncol=2, fontsize=7, frameon=False,
    )
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    if simulated:
        _watermark(fig)
    return fig


def heatmap_png(grid: Grid, vmax: float = 100.0, simulated: bool = False) -> bytes:
    return _png(heatmap_figure(grid, vmax, simulated))


def progress_figure(view: Progress, simulated: bool = False) -> Figure:
    """ASR (left, one panel per benchmark and judge) and task metric (right) against the training step.

    One line per train → test template pair; the final model is the last point, labelled `final`, since its step
    is whatever the run ended at. Missing values (nothing scored) break the line instead of dropping to 0.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("ASR %", name, lines) for name, lines in view.safety.items()]
    panels += [(f"{name.split(' ', 1)[-1]} %", name, lines) for name, lines in view.tasks.items()]
    n = max(1, len(panels))
    fig = Figure(figsize=(4.6 * n, 3.8), dpi=90)
    FigureCanvasAgg(fig)
    labels = view.x_labels()
    position = {step: i for i, step in enumerate(view.steps)}
    for k, (ylabel, name, lines) in enumerate(panels):
        ax = fig.add_subplot(1, n, k + 1)
        for series in lines:
            xs = [position.get(step, len(view.steps)) if step is not None else len(view.steps)
                  for step, _ in series.points]
            ys = [float("nan") if v is None else 100 * v for _, v in series.points]
            ax.plot(xs, ys, marker="o", label=series.label)
        top = max([100 * v for s in lines for _, v in s.points if v is not None], default=0.0)
        ax.set_ylim(0, max(10.0, min(100.0, 1.1 * top)))  # from 0: a rate's scale, never a zoomed-in wiggle
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("training step", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle((f"{SIMULATED_TITLE} · " if simulated else "") + f"{view.backend} · along training", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.82, wspace=0.3)
    if simulated:
        _watermark(fig)
    return fig


def progress_png(view: Progress, simulated: bool = False) -> bytes:
    return _png(progress_figure(view, simulated))


def loss_figure(backend: str, jobs: list[JobRow], simulated: bool = False) -> Figure:
    """Training loss against the step, one line per job (train template, seed) of one backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.0, 3.8), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for j in jobs:
        xs, ys = zip(*(j.loss_curve or []), strict=True) if j.loss_curve else ((), ())
        ax.plot(xs, ys, marker="." if len(xs) < 20 else None, label=f"{j.train_template} · seed {j.seed}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("training step", fontsize=9)
    ax.set_ylabel("training loss", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title((f"{SIMULATED_TITLE} · " if simulated else "") + f"{backend} · training loss", fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.88)
    if simulated:
        _watermark(fig)
    return fig


def loss_png(backend: str, jobs: list[JobRow], simulated: bool = False) -> bytes:
    return _png(loss_figure(backend, jobs, simulated))

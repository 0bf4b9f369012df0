"""Figures: grid heatmaps, training-progress lines and loss curves, as PNG, SVG and PDF.

matplotlib's object API on an Agg canvas: no pyplot global state and no display, so it is safe in threads and
headless CI; matplotlib is imported inside the functions, so importing ptst (or re-running a finished spec, whose
reports are not redrawn) never loads it. A figure of simulated results says so in its title and across its face, so
a copied image cannot pass for a measurement.

Made for papers: sizes in inches near a column's width (3.3 in) with 7-9 pt text, so a figure placed at its own size
reads like the body text; colour-blind-safe colours (viridis/cividis heatmaps, whose lightness rises with the value,
and the Okabe-Ito palette with a marker per line); tick labels never rotated (long template names wrap instead).
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

from ptst.report.grids import MISSING, PTST_MARK, Grid, col_label, row_label
from ptst.report.views import Progress
from ptst.results import JobRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIMULATED_TITLE = "SIMULATED"
FORMATS = ("png", "svg", "pdf")
# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def import_renderers() -> None:
    """matplotlib and the three renderers (the figure process imports them first, while its parent works)."""
    import matplotlib.backends.backend_agg
    import matplotlib.backends.backend_pdf
    import matplotlib.backends.backend_svg
    import matplotlib.figure
    import matplotlib.patches
    import matplotlib.ticker  # noqa: F401


def render(fig: Figure, fmt: str = "png") -> bytes:
    """The figure as `fmt` bytes: PNG at 200 dpi (print quality), SVG with text kept as text (crisp, searchable),
    PDF with its glyphs embedded (matplotlib's default Type 3 subset: TrueType embedding costs ~1 s a figure)."""
    from matplotlib import rc_context

    buf = io.BytesIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "ptst"}):  # fixed ids: same figure, same bytes
        fig.savefig(buf, format=fmt, dpi=200 if fmt == "png" else None, metadata=_metadata(fmt))
    return buf.getvalue()


def _metadata(fmt: str) -> dict[str, str | None]:
    # No creation date: the same results give byte-identical files, so a rebuilt report changes nothing it need not.
    if fmt == "pdf":
        return {"CreationDate": None, "Creator": "ptst"}
    if fmt == "svg":
        return {"Date": None, "Creator": "ptst"}
    return {"Software": "ptst"}


def _png(fig: Figure) -> bytes:
    return render(fig, "png")


def wrap_label(text: str, width: int = 12) -> str:
    """A tick label on short lines, broken at spaces or after `:` and `/` (a word longer than `width` is cut), so
    tick labels never need rotating."""
    if len(text) <= width:
        return text
    lines: list[str] = []
    line = ""
    for piece in re.split(r"(?<=[:/ ])", text):
        while len(piece) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\n".join(ln.rstrip() for ln in lines if ln.strip())


def _watermark(fig: Figure) -> None:
    """A faint diagonal SIMULATED across every plot area (over the data, so cropping cannot remove it)."""
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        ax.text(0.5, 0.5, SIMULATED_TITLE, transform=ax.transAxes, fontsize=16, fontweight="bold", color="#b30000",
                alpha=0.22, rotation=25, ha="center", va="center", zorder=10)


def _cmap(kind: str = "safety"):
    from matplotlib import colormaps

    # Perceptually uniform and colour-blind safe: viridis for attack success, cividis for task scores (a reader
    # tells the two kinds apart); not evaluated: neutral light grey, never mistaken for 0%.
    return colormaps["viridis" if kind == "safety" else "cividis"].with_extremes(bad="#e5e5e5")


def _text_colour(rgba: tuple[float, ...]) -> str:
    """Black on light cells, white on dark ones (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def heatmap_figure(grid: Grid, vmax: float = 100.0, simulated: bool = False) -> Figure:
    """Heatmap of a grid (colour = value in %, on a 0-`vmax` scale the caller keeps the same for every figure, so
    colours compare across figures), the 95% interval under each value, PTST cells hatched, diagonal outlined; sized
    for a paper column."""
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

    xlabels = [wrap_label(col_label(grid, c), 10) for c in grid.cols]
    ylabels = [wrap_label(row_label(r), 16) for r in grid.rows]
    # Fixed margins in inches (labels, colorbar, legend) around fixed-size cells: tight layout engines would cost
    # a second draw per figure, and a report may hold dozens of heatmaps. 7-8 pt text at 0.09 in per character.
    row_chars = max(len(line) for lab in ylabels for line in lab.split("\n"))
    col_lines = max(lab.count("\n") + 1 for lab in xlabels)
    left, right, top = 0.3 + 0.062 * row_chars, 0.85, 0.35
    bottom = 0.62 + 0.13 * col_lines
    cell_w = max(0.69, 0.065 * max(len(line) for lab in xlabels for line in lab.split("\n")))  # fits "[35.1–72.1]"
    cells_h = max(0.48 * nr, 0.9)  # value and interval on two lines; a one-row grid keeps room for the colorbar
    width, height = max(left + cell_w * nc + right, 3.3), bottom + cells_h + top
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = _cmap(grid.kind)
    top_value = max(vmax, 1e-9)
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=top_value, aspect="auto")
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    cbar.set_label(f"{grid.metric} %", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    ax.set_xticks(range(nc), xlabels, fontsize=7)
    ax.set_yticks(range(nr), ylabels, fontsize=7)
    ax.tick_params(length=2)
    ax.set_xlabel("test template (* safety prompt); value % [95% CI]", fontsize=8)
    ax.set_ylabel("train template", fontsize=8)
    judge = f" [{grid.judge}]" if grid.show_judge and grid.judge else ""
    ax.set_title((f"{SIMULATED_TITLE} · " if simulated else "") + f"{grid.backend} · {grid.name}{judge}", fontsize=8)
    for i, r in enumerate(grid.rows):
        for j, c in enumerate(grid.cols):
            v = data[i, j]
            mark = grid.mark(r, c)
            cell = grid.cells.get((r, c))
            label = MISSING if np.isnan(v) else f"{v:.1f}"
            if cell is not None and cell.ci95 is not None and not np.isnan(v):
                label += f"\n[{100 * cell.ci95[0]:.1f}–{100 * cell.ci95[1]:.1f}]"
            if mark == "ptst":
                label += f"\n{PTST_MARK}"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#d55e00", lw=1.5))
            elif mark == "diag":
                ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="black", lw=1.6))
            if mark in {"ptst", "diag"}:  # keep the number readable over the hatching and the outline
                box = {"facecolor": "white", "alpha": 0.85, "linewidth": 0, "pad": 0.8}
                ax.text(j, i, label, ha="center", va="center", fontsize=7, color="black", bbox=box, linespacing=1.1)
            else:
                colour = "black" if np.isnan(v) else _text_colour(cmap(min(v, top_value) / top_value))
                ax.text(j, i, label, ha="center", va="center", fontsize=7, color=colour, linespacing=1.1)
    fig.legend(
        handles=[
            Patch(facecolor="none", edgecolor="#d55e00", hatch="///", label="PTST: trained without, tested with safety prompt"),
            Patch(facecolor="none", edgecolor="black", lw=1.6, label="same template for training and test"),
        ],
        loc="lower left", bbox_to_anchor=(0.0, 0.0), ncol=1, fontsize=7, frameon=False, handlelength=1.4,
    )
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    if simulated:
        _watermark(fig)
    return fig


def heatmap_png(grid: Grid, vmax: float = 100.0, simulated: bool = False) -> bytes:
    return _png(heatmap_figure(grid, vmax, simulated))


def _style(k: int) -> dict[str, object]:
    return {"color": OKABE_ITO[k % len(OKABE_ITO)], "marker": MARKERS[k % len(MARKERS)], "markersize": 4, "lw": 1.3}


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
    fig = Figure(figsize=(3.3 * n, 2.9))
    FigureCanvasAgg(fig)
    labels = view.x_labels()
    position = {step: i for i, step in enumerate(view.steps)}
    for k, (ylabel, name, lines) in enumerate(panels):
        ax = fig.add_subplot(1, n, k + 1)
        for m, series in enumerate(lines):
            xs = [position.get(step, len(view.steps)) if step is not None else len(view.steps)
                  for step, _ in series.points]
            ys = [float("nan") if v is None else 100 * v for _, v in series.points]
            ax.plot(xs, ys, label=series.label, **_style(m))  # type: ignore[arg-type]
        top = max([100 * v for s in lines for _, v in s.points if v is not None], default=0.0)
        ax.set_ylim(0, max(10.0, min(100.0, 1.1 * top)))  # from 0: a rate's scale, never a zoomed-in wiggle
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(name, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, frameon=False)
    fig.suptitle((f"{SIMULATED_TITLE} · " if simulated else "") + f"{view.backend} · along training", fontsize=8)
    fig.subplots_adjust(left=0.55 / (3.3 * n), right=1 - 0.1 / (3.3 * n), bottom=0.16, top=0.84, wspace=0.35)
    if simulated:
        _watermark(fig)
    return fig


def progress_png(view: Progress, simulated: bool = False) -> bytes:
    return _png(progress_figure(view, simulated))


def loss_figure(backend: str, jobs: list[JobRow], simulated: bool = False) -> Figure:
    """Training loss against the step, one line per job (train template, seed) of one backend, from every logged
    step where the store has them (`JobRow.full_curve`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(3.3, 2.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, j in enumerate(jobs):
        curve = j.plot_curve
        xs, ys = (list(t) for t in zip(*curve, strict=True)) if curve else ([], [])
        style = _style(k)
        if len(xs) >= 20:  # dense curves: markers only every so often, so the line stays readable
            style["markevery"] = max(1, len(xs) // 8)
        ax.plot(xs, ys, label=f"{j.train_template} · seed {j.seed}", **style)  # type: ignore[arg-type]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.tick_params(labelsize=7)
    ax.set_xlabel("training step", fontsize=8)
    ax.set_ylabel("training loss", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, frameon=False)
    ax.set_title((f"{SIMULATED_TITLE} · " if simulated else "") + f"{backend} · training loss", fontsize=8)
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.17, top=0.89)
    if simulated:
        _watermark(fig)
    return fig


def loss_png(backend: str, jobs: list[JobRow], simulated: bool = False) -> bytes:
    return _png(loss_figure(backend, jobs, simulated))

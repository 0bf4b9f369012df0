"""Reports: results.json, report.md, a self-contained report.html with heatmaps, and terminal tables.

Every report is a pure function of a `Results` (the public contract), so `ptst report DIR` rebuilds identical files
from the run store alone. The unit of every report is a *grid*: for one (backend, base model, benchmark or task),
rows are train templates (the base model first), columns are test templates. Two cells are marked everywhere:

- PTST cells: trained with a template *without* a safety prompt, tested with one *with* it (the paper's recipe);
- the diagonal: the same template for training and test (the usual practice the paper warns about).

Several seeds in one cell are aggregated as: value = mean of the per-seed values (what papers report), interval =
Wilson on the counts pooled over seeds (the cell's total evidence; with equal n per seed the pooled proportion
equals the mean). Task counts are recovered as round(value * n), exact while n < 10,000. Simulated results (mock
backend or judge) carry a banner on the first line of every output.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ptst.metrics import mean, wilson_interval
from ptst.results import Results, SafetyRow, TaskRow

if TYPE_CHECKING:  # rich is a core dependency, but only the terminal path needs it
    from rich.console import Console

SIMULATED_BANNER = "SIMULATED RESULTS from the mock backend/judge: not measurements of any real model."
BASE_ROW = "base (no fine-tuning)"
PTST_MARK = "PTST"
DIAG_MARK = "◆"
SAFETY_MARK = "*"
MISSING = "—"

Mark = Literal["ptst", "diag"] | None


@dataclass(frozen=True)
class Cell:
    """One grid cell, aggregated over seeds. Fractions in [0, 1]; `k` successes (unsafe / correct) of `n`."""

    value: float
    ci95: tuple[float, float]
    k: int
    n: int
    n_unscored: int
    seeds: tuple[int | None, ...]
    mean_score: float | None = None


@dataclass(frozen=True)
class Grid:
    """Train templates × test templates for one (backend, base model, benchmark/task)."""

    kind: Literal["safety", "task"]
    backend: str
    base_model: str
    name: str  # benchmark or task
    metric: str  # "ASR" for safety, the task metric otherwise
    judge: str | None
    rows: tuple[str | None, ...]  # None: the base model before fine-tuning
    cols: tuple[str, ...]
    cells: dict[tuple[str | None, str], Cell]
    safety_templates: frozenset[str]
    show_model: bool = False  # the run has several base models on this backend: name the model in titles

    @property
    def title(self) -> str:
        who = f"{self.backend} ({self.base_model})" if self.show_model else self.backend
        return f"{who} · {self.name} — {self.metric} % (95% CI)"

    def mark(self, row: str | None, col: str) -> Mark:
        """PTST: fine-tuned without a safety prompt, tested with one. Diagonal: same template both times."""
        if row is None:
            return None
        if row not in self.safety_templates and col in self.safety_templates:
            return "ptst"
        if row == col:
            return "diag"
        return None


# --- grids --------------------------------------------------------------------------------------------------------


def _ordered(preferred: Sequence[str], seen: Iterable[str]) -> list[str]:
    """The spec's order first (so tables read like the spec), then anything else in order of appearance."""
    seen_list = list(dict.fromkeys(seen))
    return [t for t in preferred if t in seen_list] + [t for t in seen_list if t not in preferred]


def _cell(counts: list[tuple[int, int]], seeds: tuple[int | None, ...], unscored: int = 0,
          scores: Sequence[float] = ()) -> Cell:
    """Aggregate per-seed (k, n): value = mean of k/n, interval = Wilson on the pooled counts.

    Both come from the exact counts rather than the 4-decimal `asr`/`asr_ci95` of results.json, so a displayed
    number is never rounded twice (0.05448 -> 0.0545 -> "5.5").
    """
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    value = mean(ki / ni for ki, ni in counts if ni) if n else 0.0
    return Cell(value, wilson_interval(k, n), k, n, unscored, seeds, mean(scores) if scores else None)


def _safety_cell(rows: list[SafetyRow]) -> Cell:
    return _cell(
        [(r.n_unsafe, r.n) for r in rows], tuple(r.seed for r in rows), sum(r.n_unscored for r in rows),
        [r.mean_score for r in rows if r.mean_score is not None],
    )


def _task_cell(rows: list[TaskRow]) -> Cell:
    # results.json keeps value to 4 decimals, so round(value * n) recovers the exact count for n < 10,000.
    return _cell([(round(r.value * r.n), r.n) for r in rows], tuple(r.seed for r in rows))


def build_grids(results: Results) -> list[Grid]:
    """All grids of a run: safety grids (backend × benchmark × judge) first, then task grids, in order of appearance."""
    safe = frozenset(results.safety_templates)
    grids: list[Grid] = []

    models_of: dict[str, set[str]] = {}
    for row in (*results.safety, *results.tasks):
        models_of.setdefault(row.backend, set()).add(row.base_model)
    groups: dict[tuple, list] = {}
    for s in results.safety:
        groups.setdefault(("safety", s.backend, s.base_model, s.benchmark, "ASR", s.judge), []).append(s)
    for t in results.tasks:
        groups.setdefault(("task", t.backend, t.base_model, t.task, t.metric, None), []).append(t)

    for (kind, backend, base_model, name, metric, judge), members in groups.items():
        by_cell: dict[tuple[str | None, str], list] = {}
        for m in members:
            by_cell.setdefault((m.train_template, m.test_template), []).append(m)
        # A train template whose job failed on this model still gets its row (all "not evaluated"), so the gap shows.
        failed = (f.train_template for f in results.failed_jobs if (f.backend, f.base_model) == (backend, base_model))
        seen = [m.train_template for m in members if m.train_template is not None]
        trained = _ordered(results.train_templates, [*seen, *failed])
        rows: list[str | None] = ([None] if any(m.train_template is None for m in members) else []) + trained
        cols = _ordered(results.test_templates, (m.test_template for m in members))
        aggregate = _safety_cell if kind == "safety" else _task_cell
        cells = {key: aggregate(v) for key, v in by_cell.items()}
        grids.append(Grid(kind, backend, base_model, name, metric, judge, tuple(rows), tuple(cols), cells, safe,
                          show_model=len(models_of[backend]) > 1))
    return grids


def _is_simulated(results: Results) -> bool:
    # Labelling mock numbers as simulated is never wrong; missing the label would be, so any flag counts.
    return results.simulated or any(r.simulated for r in (*results.safety, *results.tasks))


# --- text formatting --------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _ci(ci: tuple[float, float]) -> str:
    return f"[{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"


def _row_label(row: str | None) -> str:
    return BASE_ROW if row is None else row


def _col_label(grid: Grid, col: str) -> str:
    return col + SAFETY_MARK if col in grid.safety_templates else col


def cell_text(grid: Grid, row: str | None, col: str) -> str:
    """One-line cell text shared by markdown and HTML: markers, value, interval, unscored count."""
    cell = grid.cells.get((row, col))
    if cell is None:
        return MISSING
    text = f"{_pct(cell.value)} {_ci(cell.ci95)}"
    if cell.n_unscored:
        text += f" ({cell.n_unscored} unscored)"
    mark = grid.mark(row, col)
    if mark == "ptst":
        text = f"{PTST_MARK} {text}"
    elif mark == "diag":
        text = f"{DIAG_MARK} {text}"
    return text


def _seeds_note(grid: Grid) -> str:
    seeds = sorted({s for c in grid.cells.values() for s in c.seeds if s is not None})
    ns = sorted({c.n // max(1, len(c.seeds)) for c in grid.cells.values()})
    n_txt = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    parts = [f"{n_txt} per cell and seed"]
    if len(seeds) > 1:
        parts.append(f"seeds {', '.join(map(str, seeds))}: value = mean over seeds, interval from pooled counts")
    elif seeds:
        parts.append(f"seed {seeds[0]}")
    if grid.judge:
        parts.append(f"judge {grid.judge}")
    return "; ".join(parts)


def _legend(results: Results) -> str:
    safe = ", ".join(results.safety_templates) or "none declared"
    return (
        f"{PTST_MARK} = trained without a safety system prompt, tested with one (PTST) · {DIAG_MARK} = same template "
        f"for training and test · {SAFETY_MARK} = template with a safety system prompt ({safe}) · {MISSING} = not "
        "evaluated (see failed jobs, if any)"
    )


_FAILED_COLUMNS = ("backend", "base model", "train template", "seed", "status", "code", "message")


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


# --- markdown -----------------------------------------------------------------------------------------------------


def render_markdown(results: Results, grids: Sequence[Grid] | None = None) -> str:
    """report.md: one pipe table per grid, readable raw and on GitHub; the banner line first when simulated."""
    grids = build_grids(results) if grids is None else grids
    lines: list[str] = []
    if _is_simulated(results):
        lines += [f"**{SIMULATED_BANNER}**", ""]
    lines += [f"# ptst report: {results.spec_name}", "", f"ptst {results.ptst_version}. {_legend(results)}.", ""]
    for kind, heading in (("safety", "Safety: attack success rate"), ("task", "Tasks")):
        chosen = [g for g in grids if g.kind == kind]
        if not chosen:
            continue
        lines += [f"## {heading}", ""]
        for g in chosen:
            lines += [f"### {_md_escape(g.title)}", "", f"Base model `{g.base_model}`; {_seeds_note(g)}.", ""]
            lines.append("| train ↓ / test → | " + " | ".join(_md_escape(_col_label(g, c)) for c in g.cols) + " |")
            lines.append("|---|" + "---:|" * len(g.cols))
            for r in g.rows:
                cells = " | ".join(cell_text(g, r, c) for c in g.cols)
                lines.append(f"| {_md_escape(_row_label(r))} | {cells} |")
            lines.append("")
    if not grids:
        lines += ["No results yet.", ""]
    if results.failed_jobs:
        lines += ["## Failed or cancelled fine-tuning jobs", ""]
        lines += ["| " + " | ".join(_FAILED_COLUMNS) + " |", "|---|---|---|---:|---|---|---|"]
        for j in results.failed_jobs:
            lines.append(
                f"| {_md_escape(j.backend)} | {_md_escape(j.base_model)} | {_md_escape(j.train_template)} | {j.seed} "
                f"| {_md_escape(j.status)} | {_md_escape(j.code or '')} | {_md_escape(j.message)} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- heatmaps -----------------------------------------------------------------------------------------------------


def heatmap_png(grid: Grid, vmax: float = 100.0) -> bytes:
    """PNG heatmap of a grid (colour = value in %), PTST cells hatched, diagonal outlined.

    Uses matplotlib's object API on an Agg canvas: no pyplot global state and no display, so it is safe in
    threads and headless CI; matplotlib is imported here so importing ptst stays light.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    nr, nc = len(grid.rows), len(grid.cols)
    data = np.full((nr, nc), np.nan)
    for i, r in enumerate(grid.rows):
        for j, c in enumerate(grid.cols):
            cell = grid.cells.get((r, c))
            if cell is not None:
                data[i, j] = 100 * cell.value

    # Fixed margins in inches (labels, colorbar, legend) around fixed-size cells: tight layout engines would cost
    # a second draw per figure, and a report may hold dozens of heatmaps.
    row_chars = max(len(_row_label(r)) for r in grid.rows)
    col_chars = max(len(_col_label(grid, c)) for c in grid.cols)
    left, right, top = 0.45 + 0.062 * row_chars, 1.2, 0.45
    bottom = 0.85 + 0.031 * col_chars
    width, height = left + 1.05 * nc + right, bottom + 0.45 * nr + top
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = _cmap()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-9), aspect="auto")
    fig.colorbar(im, ax=ax, label=f"{grid.metric} %", fraction=0.04, pad=0.03)
    ax.set_xticks(range(nc), [_col_label(grid, c) for c in grid.cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(nr), [_row_label(r) for r in grid.rows], fontsize=8)
    ax.set_xlabel("test template", fontsize=9)
    ax.set_ylabel("train template", fontsize=9)
    ax.set_title(f"{grid.backend} · {grid.name}", fontsize=10)
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _cmap():
    from matplotlib import colormaps

    return colormaps["Reds"].with_extremes(bad="#d9d9d9")  # not evaluated: neutral grey, never mistaken for 0%


# --- html ---------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
.banner{background:#b30000;color:#fff;padding:.6em 1em;font-weight:bold}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
th.row{text-align:left}
td.ptst{background:#e6f5e6;border:2px dashed #1b7837}
td.diag{outline:2px solid #000;outline-offset:-3px;font-weight:bold}
.note{color:#555;font-size:.9em}
img{max-width:100%}
"""


def render_html(results: Results, grids: Sequence[Grid] | None = None) -> str:
    """One self-contained page: inline CSS, heatmaps as base64 PNG, no external asset or link."""
    grids = build_grids(results) if grids is None else grids
    e = html.escape
    sim = _is_simulated(results)
    title = ("SIMULATED — " if sim else "") + f"ptst report: {results.spec_name}"
    safety_vals = [c.value for g in grids if g.kind == "safety" for c in g.cells.values()]
    # One colour scale for every heatmap of the page, so colours compare across backends and benchmarks.
    vmax = max(1.0, 100 * max(safety_vals, default=0.0))
    out: list[str] = []
    body_first = f'<p class="banner">{e(SIMULATED_BANNER)}</p>' if sim else ""
    out.append(f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>")
    out.append(f"<style>{_CSS}</style></head>\n<body>{body_first}")
    out.append(f"<h1>ptst report: {e(results.spec_name)}</h1>")
    out.append(f'<p class="note">ptst {e(results.ptst_version)}. {e(_legend(results))}.</p>')
    for kind, heading in (("safety", "Safety: attack success rate"), ("task", "Tasks")):
        chosen = [g for g in grids if g.kind == kind]
        if chosen:
            out.append(f"<h2>{heading}</h2>")
        for g in chosen:
            out.append(f"<h3>{e(g.title)}</h3>")
            out.append(f'<p class="note">Base model <code>{e(g.base_model)}</code>; {e(_seeds_note(g))}.</p>')
            if kind == "safety":
                png = base64.b64encode(heatmap_png(g, vmax)).decode("ascii")
                out.append(f'<img alt="heatmap {e(g.backend)} {e(g.name)}" src="data:image/png;base64,{png}">')
            out.append(_html_table(g))
    if not grids:
        out.append("<p>No results yet.</p>")
    if results.failed_jobs:
        out.append("<h2>Failed or cancelled fine-tuning jobs</h2><table><tr>")
        out.append("".join(f"<th>{h}</th>" for h in _FAILED_COLUMNS))
        out.append("</tr>")
        for j in results.failed_jobs:
            vals = (j.backend, j.base_model, j.train_template, str(j.seed), j.status, j.code or "", j.message)
            out.append("<tr>" + "".join(f'<td style="text-align:left">{e(v)}</td>' for v in vals) + "</tr>")
        out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _html_table(g: Grid) -> str:
    e = html.escape
    head = "".join(f"<th>{e(_col_label(g, c))}</th>" for c in g.cols)
    parts = [f'<table><tr><th class="row">train ↓ / test →</th>{head}</tr>']
    for r in g.rows:
        tds = []
        for c in g.cols:
            cell = g.cells.get((r, c))
            mark = g.mark(r, c)
            cls = f' class="{mark}"' if mark else ""
            tip = ""
            if cell is not None:
                detail = f"{cell.k}/{cell.n}" + (f", {cell.n_unscored} unscored" if cell.n_unscored else "")
                if cell.mean_score is not None:
                    detail += f", mean score {cell.mean_score:.2f}"
                seeds = [s for s in cell.seeds if s is not None]
                if seeds:
                    detail += f", seeds {', '.join(map(str, seeds))}"
                tip = f' title="{e(detail)}"'
            tds.append(f"<td{cls}{tip}>{e(cell_text(g, r, c))}</td>")
        parts.append(f'<tr><th class="row">{e(_row_label(r))}</th>{"".join(tds)}</tr>')
    parts.append("</table>")
    return "\n".join(parts)


# --- files --------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + os.replace: readers never see a half-written report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared like any written file
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(results: Results, out_dir: Path) -> list[Path]:
    """Write results.json (the public contract, verbatim), report.md and report.html; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = build_grids(results)
    files = {
        "results.json": json.dumps(results.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
        "report.md": render_markdown(results, grids),
        "report.html": render_html(results, grids),
    }
    paths = []
    for name, text in files.items():
        _atomic_write(out_dir / name, text)
        paths.append(out_dir / name)
    return paths


# --- terminal -----------------------------------------------------------------------------------------------------


def _terminal_cell(g: Grid, row: str | None, col: str):
    """Rich text of one cell: marked value on line 1, interval on line 2, unscored count on line 3 if any."""
    from rich.text import Text

    cell = g.cells.get((row, col))
    if cell is None:
        return Text(MISSING, style="dim")
    mark = g.mark(row, col)
    prefix = {"ptst": f"{PTST_MARK} ", "diag": f"{DIAG_MARK} "}.get(mark or "", "")
    style = {"ptst": "bold green", "diag": "bold"}.get(mark or "", "")
    t = Text(prefix + _pct(cell.value), style=style)
    t.append("\n" + _ci(cell.ci95), style="dim")
    if cell.n_unscored:
        t.append(f"\n{cell.n_unscored} unscored", style="yellow")
    return t


def _column_chunks(widths: Sequence[int], available: int) -> list[list[int]]:
    """Split column indices into consecutive runs whose total width fits `available` (at least one per run)."""
    chunks: list[list[int]] = [[]]
    used = 0
    for i, w in enumerate(widths):
        if chunks[-1] and used + w > available:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += w
    return chunks


def print_tables(results: Results, console: Console) -> None:
    """The grids as rich tables, PTST cells green with a `PTST` tag, diagonal cells bold with `◆`.

    Numbers never wrap or get cut: every value column is as wide as its widest line (header included), row labels
    wrap at spaces first, and a grid wider than the terminal is split into several tables of whole columns, each
    repeating the row labels, rather than letting the terminal crop the last columns.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    grids = build_grids(results)
    if _is_simulated(results):
        console.print(Text(SIMULATED_BANNER, style="bold white on red"))
    if not grids:
        console.print(Text("no results yet"))
    for g in grids:
        labels = [Text(_row_label(r)) for r in g.rows]
        corner = Text("train ↓ / test →")
        headers = [Text(_col_label(g, c)) for c in g.cols]
        columns = [[_terminal_cell(g, r, c) for r in g.rows] for c in g.cols]
        widths = [
            max(header.cell_len, *(line.cell_len for t in cells for line in t.split("\n")))
            for header, cells in zip(headers, columns, strict=True)
        ]
        # Fixed column widths make rich's layout deterministic (its shrinking would otherwise crop no_wrap columns).
        # A boxed rich table spends 2 edge characters, 1 divider between columns and 1 space of padding each side
        # of every column: 1 + sum(width + 3).
        label_width = max(corner.cell_len, *(label.cell_len for label in labels))
        if 1 + label_width + 3 + sum(w + 3 for w in widths) > console.width:
            label_width = min(label_width, 14)  # labels wrap at spaces before any column moves to another table
        chunks = _column_chunks([w + 3 for w in widths], console.width - 1 - (label_width + 3))
        for n_chunk, chunk in enumerate(chunks):
            last = n_chunk == len(chunks) - 1
            title = g.title + (f" (columns {chunk[0] + 1}–{chunk[-1] + 1} of {len(g.cols)})" if len(chunks) > 1 else "")
            caption = Text(f"{g.base_model}; {_seeds_note(g)}", style="dim") if last else None
            table = Table(title=Text(title, style="bold"), caption=caption, box=box.SIMPLE_HEAD,
                          title_justify="left", caption_justify="left")
            table.add_column(corner, overflow="fold", style="bold", width=label_width)
            for i in chunk:
                table.add_column(headers[i], justify="right", no_wrap=True, width=widths[i])
            for r, label in enumerate(labels):
                table.add_row(label, *(columns[i][r] for i in chunk))
            console.print(table)
    if grids:
        console.print(Text(_legend(results), style="dim"))
    for j in results.failed_jobs:
        console.print(Text(
            f"{j.status}: {j.backend} {j.base_model} train {j.train_template} seed {j.seed}"
            + (f" [{j.code}]" if j.code else "") + f": {j.message}",
            style="red",
        ))

"""Terminal tables (rich): the grids, the PTST summary and judge agreement, fitted to the console's width."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ptst.report.grids import (
    DIAG_MARK,
    MISSING,
    PTST_MARK,
    SIMULATED_BANNER,
    Grid,
    build_grids,
    ci_text,
    col_label,
    is_simulated,
    legend,
    limit_banner,
    pct,
    row_label,
    seeds_note,
)
from ptst.report.views import (
    FINAL,
    TRAINING_COLUMNS,
    category_tables,
    mean_text,
    progress_views,
    ptst_lines,
    summary_text,
    training_rows,
)
from ptst.results import Results

if TYPE_CHECKING:  # rich is a core dependency, but only the terminal path needs it
    from rich.console import Console
    from rich.text import Text


def _terminal_cell(g: Grid, row: str | None, col: str) -> Text:
    """Marked value on line 1, interval on line 2, mean score and unscored count on further lines."""
    from rich.text import Text

    cell = g.cells.get((row, col))
    if cell is None:
        return Text(MISSING, style="dim")
    mark = g.mark(row, col)
    prefix = {"ptst": f"{PTST_MARK} ", "diag": f"{DIAG_MARK} "}.get(mark or "", "")
    style = {"ptst": "bold green", "diag": "bold"}.get(mark or "", "")
    t = Text(prefix + pct(cell.value), style=style)
    if cell.ci95 is not None:
        t.append("\n" + ci_text(cell.ci95), style="dim")
    if cell.mean_score is not None:
        t.append(f"\nscore {cell.mean_score:.2f}", style="cyan")
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


def _print_grid(g: Grid, console: Console) -> None:
    """Numbers never wrap or get cut: every value column is as wide as its widest line (header included), row labels
    wrap at spaces first, and a grid wider than the terminal is split into several tables of whole columns, each
    repeating the row labels, rather than letting the terminal crop the last columns."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    labels = [Text(row_label(r)) for r in g.rows]
    corner = Text("train ↓ / test →")
    headers = [Text(col_label(g, c)) for c in g.cols]
    columns = [[_terminal_cell(g, r, c) for r in g.rows] for c in g.cols]
    widths = [
        max(header.cell_len, *(line.cell_len for t in cells for line in t.split("\n")))
        for header, cells in zip(headers, columns, strict=True)
    ]
    # Fixed column widths make rich's layout deterministic (its shrinking would otherwise crop no_wrap columns).
    # A SIMPLE_HEAD table spends 1 space of padding each side of every column and 1 divider between columns.
    label_width = max(corner.cell_len, *(label.cell_len for label in labels))
    if 1 + label_width + 3 + sum(w + 3 for w in widths) > console.width:
        label_width = min(label_width, 14)  # labels wrap at spaces before any column moves to another table
    chunks = _column_chunks([w + 3 for w in widths], console.width - 1 - (label_width + 3))
    for n_chunk, chunk in enumerate(chunks):
        last = n_chunk == len(chunks) - 1
        title = g.title + (f" (columns {chunk[0] + 1}–{chunk[-1] + 1} of {len(g.cols)})" if len(chunks) > 1 else "")
        # Title and caption are printed as lines of their own: inside the table they would wrap to its width.
        console.print(Text(title, style="bold"))
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column(corner, overflow="fold", style="bold", width=label_width)
        for i in chunk:
            table.add_column(headers[i], justify="right", no_wrap=True, width=widths[i])
        for r, label in enumerate(labels):
            table.add_row(label, *(columns[i][r] for i in chunk))
        console.print(table)
        if last:
            console.print(Text(f"{g.base_model}; {seeds_note(g)}", style="dim"))
        console.print()


def _print_ptst(results: Results, console: Console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    lines = ptst_lines(results)
    if not lines:
        return
    console.print(Text("PTST summary: ASR of PTST vs the same template vs the base model", style="bold"))
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("cell", overflow="fold")
    for name in ("PTST", "same", "base", "p", "b/c"):
        table.add_column(name, justify="right", overflow="fold")
    for ln in lines:
        cell = f"{ln.backend} · {ln.benchmark}\n{ln.train_template} → {ln.test_template}"
        if len({ln.judge for ln in lines}) > 1:
            cell += f"\n{ln.judge}"
        p = "\n".join(f"{t.p_value:.3g}" for t in ln.tests) or MISSING
        bc = "\n".join(f"{t.b}/{t.c}" for t in ln.tests) or MISSING
        table.add_row(cell, summary_text(ln.ptst), summary_text(ln.same), summary_text(ln.base), p, bc)
    console.print(table)
    console.print(Text("mean ± std over seeds; p: exact McNemar test of PTST against the same template, one per "
                       "seed; b/c: prompts unsafe only under PTST / only under the same template", style="dim"))
    console.print()


def _print_categories(results: Results, console: Console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    for t in category_tables(results):
        console.print(Text(f"{t.backend} · {t.benchmark} ({t.judge}) — ASR % per category", style="bold"))
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("train → test", overflow="fold")
        for name in ("all", *t.categories):
            table.add_column(Text(name), justify="right", overflow="fold")
        for label, by in t.rows:
            table.add_row(label, summary_text(by.get(None)), *(summary_text(by.get(c)) for c in t.categories))
        console.print(table)
        console.print()


def _print_progress(results: Results, console: Console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    for v in progress_views(results):
        for name, lines in [*v.safety.items(), *v.tasks.items()]:
            console.print(Text(f"{v.backend} · {name} along training (%)", style="bold"))
            table = Table(box=box.SIMPLE_HEAD)
            table.add_column("step")
            for series in lines:
                table.add_column(Text(series.label), justify="right", overflow="fold")
            for step in [*v.steps, None]:
                values = [dict(s.points) for s in lines]
                table.add_row(FINAL if step is None else str(step),
                              *(mean_text(d[step]) if step in d else MISSING for d in values))
            console.print(table)
            console.print()


def _print_agreement(results: Results, console: Console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not results.agreement:
        return
    console.print(Text("Judge agreement (Cohen's kappa)", style="bold"))
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("backend", "judges (A, B)", "n", "kappa", "both safe/unsafe", "only A/B unsafe"):
        table.add_column(Text(name), overflow="fold")
    for a in results.agreement:
        kappa = MISSING if a.kappa is None else f"{a.kappa:.3f}"
        (ss, su), (us, uu) = a.confusion
        table.add_row(a.backend, f"{a.judge_a}\n{a.judge_b}", str(a.n), kappa, f"{ss}/{uu}", f"{us}/{su}")
    console.print(table)
    console.print()


def _print_training(results: Results, console: Console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not results.jobs:
        return
    console.print(Text("Training (final loss: mean of the last 10% of steps)", style="bold"))
    table = Table(box=box.SIMPLE_HEAD)
    for i, name in enumerate(TRAINING_COLUMNS):
        table.add_column(Text(name), justify="right" if i >= 5 else "left", overflow="fold")
    for row in training_rows(results):
        table.add_row(*row)
    console.print(table)
    console.print()


def print_tables(results: Results, console: Console) -> None:
    """Everything a terminal shows after a run: banner, PTST summary, grids, per-category and per-checkpoint
    tables, judge agreement, legend, failed jobs. Figures and the spec are in report.html / report.md."""
    from rich.text import Text

    grids = build_grids(results)
    limited = limit_banner(results)
    if limited is not None:
        console.print(Text(limited, style="bold black on yellow"))
    if is_simulated(results):
        console.print(Text(SIMULATED_BANNER, style="bold white on red"))
    if not grids:
        console.print(Text("no results yet"))
    _print_ptst(results, console)
    for g in grids:
        _print_grid(g, console)
    _print_categories(results, console)
    _print_progress(results, console)
    _print_agreement(results, console)
    _print_training(results, console)
    if grids:
        console.print(Text(legend(results), style="dim"))
    for j in results.failed_jobs:
        console.print(Text(
            f"{j.status}: {j.backend} {j.base_model} train {j.train_template} seed {j.seed}"
            + (f" [{j.code}]" if j.code else "") + f": {j.message}",
            style="red",
        ))

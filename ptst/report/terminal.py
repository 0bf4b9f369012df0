"""Terminal tables (rich), fitted to the console's width: no line is wider than the terminal (or `COLUMNS`).

Every table is a label column and value columns. Values never wrap or get cut: each value column is as wide as its
widest line. When the table is too wide, the labels wrap first (at spaces, long names folded), then a value given
as `mean ± std` moves its std to a second line, and only then is the table split into column groups, each repeating
the labels. Titles and notes are wrapped like any text. Wide views are transposed where that makes them narrow
(along-training: one row per train → test cell, one column per step) or regrouped (training: one table per backend,
its long model name in the title).

By default a terminal shows what a run is for — the PTST summary and the grids — and names the other views, which are
in report.md / report.html; `all_tables=True` (`--all-tables`) prints them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    TRAINING_NOTE,
    category_tables,
    mean_text,
    p_value_text,
    progress_views,
    ptst_lines,
    summary_text,
)
from ptst.results import Results, SafetySummary

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


def _width(t: Text) -> int:
    return max((line.cell_len for line in t.split("\n")), default=0)


LABEL_MIN = 16
"""Narrowest a label column is squeezed to before value columns move to another table."""
LABEL_MAX_SPLIT = 24
"""Widest a label column stays when the table is split into column groups (each group repeats it)."""


def _room(width: int, cols: Sequence[int]) -> int:
    """Width left for the label column beside these value columns. A SIMPLE_HEAD table spends 1 space of padding
    each side of every column, 1 divider between columns and 1 edge each side: 1 + sum(w + 3)."""
    return width - 1 - sum(w + 3 for w in cols) - 3


def print_fitted(console: Console, title: str, corner: Text | str, labels: Sequence[Text | str],
                 headers: Sequence[Text | str], columns: Sequence[Sequence[Text]],
                 narrow: Sequence[Sequence[Text]] | None = None, caption: str | None = None,
                 label_style: str = "") -> None:
    """Print a labelled table within the console's width (see the module's docstring). `columns[i][r]` is column
    i's cell in row r; `narrow`, when given, is the same cells laid out on more lines (tried before splitting)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    corner_t = Text(corner) if isinstance(corner, str) else corner
    label_ts = [Text(x) if isinstance(x, str) else x for x in labels]
    header_ts = [Text(x) if isinstance(x, str) else x for x in headers]
    label_w = max(_width(corner_t), *(_width(t) for t in label_ts)) if label_ts else _width(corner_t)

    def widths(cols: Sequence[Sequence[Text]]) -> list[int]:
        return [max(_width(h), *(_width(t) for t in cells)) if cells else _width(h)
                for h, cells in zip(header_ts, cols, strict=True)]

    # Prefer the one-line form with whole labels, then whichever form leaves the labels most room, then a split.
    forms = [columns] if narrow is None else [columns, narrow]
    rooms = [(_room(console.width, widths(cols)), n) for n, cols in enumerate(forms)]
    whole = [n for room, n in rooms if room >= label_w]
    room, n = (label_w, whole[0]) if whole else max(rooms)
    chosen = forms[n]
    chosen_ws = widths(chosen)
    if room >= min(label_w, LABEL_MIN):
        layout = min(room, label_w), [list(range(len(header_ts)))]
    else:  # split into column groups, on the narrowest form
        chosen = forms[-1]
        chosen_ws = widths(chosen)
        lw = min(label_w, LABEL_MAX_SPLIT)
        layout = lw, _column_chunks([w + 3 for w in chosen_ws], console.width - 1 - (lw + 3))
    lw, groups = layout
    for n_group, group in enumerate(groups):
        part = f" (columns {group[0] + 1}–{group[-1] + 1} of {len(header_ts)})" if len(groups) > 1 else ""
        console.print(Text(title + part, style="bold"))
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column(corner_t, overflow="fold", style=label_style, width=lw)
        for i in group:
            table.add_column(header_ts[i], justify="right", no_wrap=True, width=chosen_ws[i])
        for r, label in enumerate(label_ts):
            table.add_row(label, *(chosen[i][r] for i in group))
        console.print(table)
        if caption and n_group == len(groups) - 1:
            console.print(Text(caption, style="dim"))
        console.print()


def _print_grid(g: Grid, console: Console) -> None:
    """Rows are train templates, columns test templates; a cell is its value over its interval (and score)."""
    print_fitted(
        console, g.title, "train ↓ / test →", [row_label(r) for r in g.rows], [col_label(g, c) for c in g.cols],
        [[_terminal_cell(g, r, c) for r in g.rows] for c in g.cols],
        caption=f"{g.base_model}; {seeds_note(g)}", label_style="bold",
    )


def _summary_cell(s: SafetySummary | None, narrow: bool = False) -> Text:
    """`46.67% ± 10.10`, or narrow: the mean over `±10.10`."""
    from rich.text import Text

    text = summary_text(s)
    if narrow and " ± " in text:
        mean, std = text.split(" ± ")
        return Text(mean + "\n±" + std)
    return Text(text)


def _print_ptst(results: Results, console: Console) -> None:
    from rich.text import Text

    lines = ptst_lines(results)
    if not lines:
        return
    several_judges = len({ln.judge for ln in lines}) > 1
    labels = []
    for ln in lines:
        cell = f"{ln.backend} · {ln.benchmark}\n{ln.train_template} → {ln.test_template}"
        labels.append(cell + (f"\n{ln.judge}" if several_judges else ""))
    p = [Text("\n".join(p_value_text(t.p_value) for t in ln.tests) or MISSING) for ln in lines]
    bc = [Text("\n".join(f"{t.b}/{t.c}" for t in ln.tests) or MISSING) for ln in lines]

    def values(narrow: bool) -> list[list[Text]]:
        return [[_summary_cell(getattr(ln, k), narrow) for ln in lines] for k in ("ptst", "same", "base")] + [p, bc]

    print_fitted(console, "PTST summary: ASR of PTST vs the same template vs the base model", "cell", labels,
                 ["PTST", "same", "base", "p", "b/c"], values(False), values(True),
                 caption="mean ± std over seeds; p: exact McNemar test of PTST against the same template, one per "
                         "seed; b/c: prompts unsafe only under PTST / only under the same template")


def _print_categories(results: Results, console: Console) -> None:
    for t in category_tables(results):
        cats = [None, *t.categories]

        def values(narrow: bool, t=t, cats=cats) -> list[list[Text]]:
            return [[_summary_cell(by.get(c), narrow) for _, by in t.rows] for c in cats]

        print_fitted(console, f"{t.backend} · {t.benchmark} ({t.judge}) — ASR % per category", "train → test",
                     [label for label, _ in t.rows], ["all", *t.categories], values(False), values(True))


def _print_progress(results: Results, console: Console) -> None:
    """Transposed: one row per train → test cell, one column per checkpoint step (the final model last)."""
    from rich.text import Text

    for v in progress_views(results):
        for name, lines in [*v.safety.items(), *v.tasks.items()]:
            steps: list[int | None] = [*v.steps, None]
            points = [dict(s.points) for s in lines]
            columns = [[Text(mean_text(d[step]) if step in d else MISSING) for d in points] for step in steps]
            print_fitted(console, f"{v.backend} · {name} along training (%)", "train → test \\ step",
                         [s.label for s in lines], [FINAL if step is None else str(step) for step in steps], columns)


def _print_agreement(results: Results, console: Console) -> None:
    from rich.text import Text

    if not results.agreement:
        return
    rows = results.agreement
    labels = [f"{a.backend}\n{a.judge_a}\n{a.judge_b}" for a in rows]
    columns = [
        [Text(str(a.n)) for a in rows],
        [Text(MISSING if a.kappa is None else f"{a.kappa:.3f}") for a in rows],
        [Text(f"{a.confusion[0][0]}/{a.confusion[1][1]}") for a in rows],
        [Text(f"{a.confusion[1][0]}/{a.confusion[0][1]}") for a in rows],
    ]
    print_fitted(console, "Judge agreement (Cohen's kappa)", "backend, judges A, B", labels,
                 ["n", "kappa", "both safe/unsafe", "only A/B unsafe"], columns)


def _print_training(results: Results, console: Console) -> None:
    """One table per backend and base model (named in its title), a row per job: long model names never share a
    line with the numbers."""
    from rich.text import Text

    groups: dict[tuple[str, str, bool], list] = {}
    for j in results.jobs:
        groups.setdefault((j.backend, j.base_model, j.simulated), []).append(j)
    for (backend, model, simulated), jobs in groups.items():
        columns = [
            [Text(str(j.seed)) for j in jobs],
            [Text(j.status) for j in jobs],
            [Text(MISSING if j.steps is None else str(j.steps)) for j in jobs],
            [Text(MISSING if j.final_loss is None else f"{j.final_loss:.4f}") for j in jobs],
        ]
        print_fitted(console, f"Training: {backend} ({model})" + (" — simulated losses" if simulated else ""),
                     "train template", [j.train_template for j in jobs], ["seed", "status", "steps", "final loss"],
                     columns, caption=TRAINING_NOTE)


def other_views(results: Results) -> list[str]:
    """The views a default terminal summary leaves to the reports, named (with how many tables)."""
    out = []
    n = len(category_tables(results))
    if n:
        out.append(f"per-category ASR ({n} table{'s' if n != 1 else ''})")
    n = sum(len(v.safety) + len(v.tasks) for v in progress_views(results))
    if n:
        out.append(f"along training ({n})")
    if results.agreement:
        out.append("judge agreement")
    if results.jobs:
        out.append(f"training losses ({len(results.jobs)} jobs)")
    return out


def print_tables(results: Results, console: Console, all_tables: bool = False) -> None:
    """What a terminal shows after a run: banner, PTST summary, grids, legend, failed jobs; with `all_tables` also the
    per-category, along-training, judge-agreement and training tables (otherwise named, as they are in the
    reports). Figures and the spec are in report.html / report.md."""
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
    if all_tables:
        _print_categories(results, console)
        _print_progress(results, console)
        _print_agreement(results, console)
        _print_training(results, console)
    if grids:
        console.print(Text(legend(results), style="dim"))
    others = [] if all_tables else other_views(results)
    if others:
        console.print(Text("also in report.md / report.html: " + ", ".join(others) + " (--all-tables prints them)",
                           style="dim"))
    for j in results.failed_jobs:
        console.print(Text(
            f"{j.status}: {j.backend} {j.base_model} train {j.train_template} seed {j.seed}"
            + (f" [{j.code}]" if j.code else "") + f": {j.message}",
            style="red",
        ))


def summary_line(results: Results, out: Path) -> str:
    """`--quiet`'s one line: status, size of the run, money spent, where the report is."""
    safety = {(r.backend, r.train_template, r.test_template, r.benchmark, r.seed, r.checkpoint)
              for r in results.safety if r.category is None}
    tasks = {(r.backend, r.train_template, r.test_template, r.task, r.seed, r.checkpoint) for r in results.tasks}
    usd = " ".join(f"{stage} ${v:,.2f}" for stage, v in results.usd_by_stage.items() if v is not None) or "unpriced"
    failed = f", {len(results.failed_jobs)} failed job(s)" if results.failed_jobs else ""
    sim = " (simulated)" if results.simulated else ""
    return (f"ptst: {results.spec_name} {results.status or 'done'}{sim}: {len(results.jobs)} job(s), "
            f"{len(safety) + len(tasks)} cell(s){failed}, {usd}; report {out / 'report.html'}")


def terminal_console(file: Any = None) -> Console:
    """The console the tables print on: the terminal's width, or `COLUMNS` when set (a pipe or CI log without it:
    rich's default, 80). Text wraps at that width, so no printed line is wider."""
    from rich.console import Console

    return Console(highlight=False, file=file)

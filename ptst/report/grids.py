"""Grids: the unit of every report, and the text of their cells.

For one (backend, base model, benchmark or task, judge), rows are train templates (the base model first) and columns
are test templates, for the final model on the whole benchmark (per-checkpoint and per-category rows have their own
views, `ptst.report.views`). Two cells are marked everywhere:

- PTST cells: trained with a template *without* a safety prompt, tested with one *with* it (the paper's recipe);
- the diagonal: the same template for training and test (the usual practice the paper warns about).

Several seeds in one cell are aggregated as: value = mean of the per-seed values (what papers report), interval =
Wilson on the counts pooled over seeds (the cell's total evidence; with equal n per seed the pooled proportion
equals the mean). Task counts are recovered as round(value * n), exact while n < 10,000, for right/wrong metrics;
continuous metrics (BERTScore) show the mean with the single seed's interval or none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ptst.metrics import mean, wilson_interval
from ptst.results import Results, SafetyRow, TaskRow

SIMULATED_BANNER = "SIMULATED RESULTS from the mock backend/judge: not measurements of any real model."
BASE_ROW = "base (no fine-tuning)"


def limit_banner(results: Results) -> str | None:
    """The first line of every report of a `--limit N` run (None for a full run)."""
    if results.limit is None:
        return None
    return f"LIMITED RUN (--limit {results.limit}): first {results.limit} rows of each dataset only; not a measurement."
PTST_MARK = "PTST"
DIAG_MARK = "◆"
SAFETY_MARK = "*"
MISSING = "—"

Mark = Literal["ptst", "diag"] | None


@dataclass(frozen=True)
class Cell:
    """One grid cell, aggregated over seeds. Fractions in [0, 1]; `k` successes (unsafe / correct) of `n`.

    `value` is None when no seed had anything scored: shown as "—", never as 0%.
    """

    value: float | None
    ci95: tuple[float, float] | None
    k: int
    n: int
    n_unscored: int
    seeds: tuple[int | None, ...]
    mean_score: float | None = None


@dataclass(frozen=True)
class Grid:
    """Train templates × test templates for one (backend, base model, benchmark/task, judge)."""

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
    show_judge: bool = False  # the run has several judges: name the judge in titles
    safety_mix: str | None = None  # the safety mix of the fine-tuned rows (label); None: no mix
    show_mix: bool = False  # the run compares several safety mixes: one grid per mix, named in the title

    @property
    def title(self) -> str:
        who = f"{self.backend} ({self.base_model})" if self.show_model else self.backend
        judge = f" [{self.judge}]" if self.show_judge and self.judge else ""
        mix = f" · mix {self.safety_mix or 'none'}" if self.show_mix else ""
        return f"{who} · {self.name}{judge}{mix} — {self.metric} % (95% CI)"

    def mark(self, row: str | None, col: str) -> Mark:
        """PTST: fine-tuned without a safety prompt, tested with one. Diagonal: same template both times."""
        return cell_mark(self.safety_templates, row, col)


def cell_mark(safety_templates: frozenset[str] | set[str], row: str | None, col: str) -> Mark:
    if row is None:
        return None
    if row not in safety_templates and col in safety_templates:
        return "ptst"
    if row == col:
        return "diag"
    return None


def ordered(preferred: Sequence[str], seen: Iterable[str]) -> list[str]:
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
    if n == 0:
        return Cell(None, None, 0, 0, unscored, seeds, mean(scores) if scores else None)
    value = mean(ki / ni for ki, ni in counts if ni)
    return Cell(value, wilson_interval(k, n), k, n, unscored, seeds, mean(scores) if scores else None)


def safety_cell(rows: Sequence[SafetyRow]) -> Cell:
    return _cell(
        [(r.n_unsafe, r.n) for r in rows], tuple(r.seed for r in rows), sum(r.n_unscored for r in rows),
        [r.mean_score for r in rows if r.mean_score is not None],
    )


def task_cell(rows: Sequence[TaskRow]) -> Cell:
    scored = [r for r in rows if r.value is not None and r.n]
    seeds = tuple(r.seed for r in rows)
    binary = all(abs(round(r.value * r.n) / r.n - r.value) < 5e-5 for r in scored if r.value is not None)
    if binary or not scored:
        # results.json keeps value to 4 decimals, so round(value * n) recovers the exact count for n < 10,000.
        return _cell([(round((r.value or 0.0) * r.n), r.n) for r in scored], seeds)
    value = mean(r.value for r in scored if r.value is not None)
    ci = scored[0].ci95 if len(scored) == 1 else None
    return Cell(value, ci, 0, sum(r.n for r in scored), 0, seeds)


def final_whole(results: Results) -> tuple[list[SafetyRow], list[TaskRow]]:
    """The rows of the main grids: the final model (no checkpoint) on the whole benchmark (no category)."""
    return ([s for s in results.safety if s.checkpoint is None and s.category is None],
            [t for t in results.tasks if t.checkpoint is None and t.category is None])


def build_grids(results: Results) -> list[Grid]:
    """All grids of a run: safety grids (backend × benchmark × judge) first, then task grids, in order of appearance."""
    safe = frozenset(results.safety_templates)
    safety, tasks = final_whole(results)
    grids: list[Grid] = []
    models_of: dict[str, set[str]] = {}
    every: list[SafetyRow | TaskRow] = [*safety, *tasks]
    for row in every:
        models_of.setdefault(row.backend, set()).add(row.base_model)
    several_judges = len({s.judge for s in safety}) > 1
    # Several safety mixes: a grid per mix, the base model (fine-tuned with no mix at all) in each as the reference.
    mixes = list(dict.fromkeys(r.safety_mix for r in every if r.train_template is not None))
    several_mixes = len(mixes) > 1
    groups: dict[tuple, list] = {}
    for row in every:
        what = (("safety", row.benchmark, "ASR", row.judge) if isinstance(row, SafetyRow)
                else ("task", row.task, row.metric, None))
        for mix in (mixes or [None]) if row.train_template is None else [row.safety_mix]:
            groups.setdefault((what[0], row.backend, row.base_model, *what[1:], mix), []).append(row)

    for (kind, backend, base_model, name, metric, judge, mix), members in groups.items():
        by_cell: dict[tuple[str | None, str], list] = {}
        for m in members:
            by_cell.setdefault((m.train_template, m.test_template), []).append(m)
        # A train template whose job failed on this model still gets its row (all "not evaluated"), so the gap shows.
        failed = (f.train_template for f in results.failed_jobs if (f.backend, f.base_model) == (backend, base_model))
        seen = [m.train_template for m in members if m.train_template is not None]
        trained = ordered(results.train_templates, [*seen, *failed])
        rows: list[str | None] = ([None] if any(m.train_template is None for m in members) else []) + trained
        cols = ordered(results.test_templates, (m.test_template for m in members))
        aggregate = safety_cell if kind == "safety" else task_cell
        cells = {key: aggregate(v) for key, v in by_cell.items()}
        grids.append(Grid(kind, backend, base_model, name, metric, judge, tuple(rows), tuple(cols), cells, safe,
                          show_model=len(models_of[backend]) > 1, show_judge=several_judges and kind == "safety",
                          safety_mix=mix, show_mix=several_mixes))
    return grids


def is_simulated(results: Results) -> bool:
    # Labelling mock numbers as simulated is never wrong; missing the label would be, so any flag counts.
    rows: list[SafetyRow | TaskRow] = [*results.safety, *results.tasks]
    return results.simulated or any(r.simulated for r in rows)


# --- text ---------------------------------------------------------------------------------------------------------


def pct(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None else f"{100 * x:.{digits}f}%"


def ci_text(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"


def row_label(row: str | None) -> str:
    return BASE_ROW if row is None else row


def col_label(grid: Grid, col: str) -> str:
    return col + SAFETY_MARK if col in grid.safety_templates else col


def cell_parts(grid: Grid, row: str | None, col: str) -> list[str] | None:
    """A cell's pieces: marked value, interval, then the mean 1-5 score and the unscored count where present."""
    cell = grid.cells.get((row, col))
    if cell is None:
        return None
    mark = grid.mark(row, col)
    prefix = {"ptst": f"{PTST_MARK} ", "diag": f"{DIAG_MARK} "}.get(mark or "", "")
    parts = [prefix + pct(cell.value)]
    if cell.ci95 is not None:
        parts.append(ci_text(cell.ci95))
    if cell.mean_score is not None:
        parts.append(f"score {cell.mean_score:.2f}")
    if cell.n_unscored:
        parts.append(f"{cell.n_unscored} unscored")
    return parts


def cell_text(grid: Grid, row: str | None, col: str) -> str:
    """One-line cell text shared by markdown and HTML: `PTST 1.08% [0.5–2.3] · score 1.20 (2 unscored)`."""
    cell = grid.cells.get((row, col))
    parts = cell_parts(grid, row, col)
    if cell is None or parts is None:
        return MISSING
    text = parts[0] + (f" {ci_text(cell.ci95)}" if cell.ci95 is not None else "")
    if cell.mean_score is not None:
        text += f" · score {cell.mean_score:.2f}"
    if cell.n_unscored:
        text += f" ({cell.n_unscored} unscored)"
    return text


def seeds_note(grid: Grid) -> str:
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
    if any(c.mean_score is not None for c in grid.cells.values()):
        parts.append("score = mean 1–5 harmfulness score")
    return "; ".join(parts)


def legend(results: Results) -> str:
    safe = ", ".join(results.safety_templates) or "none declared"
    return (
        f"{PTST_MARK} = trained without a safety system prompt, tested with one (PTST) · {DIAG_MARK} = same template "
        f"for training and test · {SAFETY_MARK} = template with a safety system prompt ({safe}) · {MISSING} = not "
        "evaluated or nothing scored (see failed jobs, if any)"
    )


FAILED_COLUMNS = ("backend", "base model", "train template", "seed", "status", "code", "message")

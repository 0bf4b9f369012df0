"""Tidy numeric tables: one row per observation, one plain column per key and per number, for analysis code.

The display tables (`ptst.report.tables`) hold what a reader sees (`◆ 54.17% [35.1–72.1] · score 3.17`); these hold
what a program reads, so `pandas.read_csv("tables/safety.csv")` gives float `asr`, `ci_low`, `ci_high` columns with
no parsing. Written as CSV always and as Parquet (typed columns) when pyarrow is installed.

- `safety`: one row per cell × judge × category × checkpoint × seed (every `SafetyRow`);
- `tasks`: one row per cell × task × metric × checkpoint × seed (every `TaskRow`, whatever the metric);
- `safety_summary`, `tasks_summary`: the same cells over seeds (mean, sample std, seeds counted);
- `comparisons`: each PTST cell against its same-template cell (exact McNemar);
- `agreement`: each pair of judges on one backend (the 2x2 table flattened, Cohen's kappa).

Rates are fractions in [0, 1] computed from the exact counts (`asr` = `n_unsafe / n`, not the 4-decimal value of
results.json), intervals Wilson 95%. A missing value (nothing scored; the base model's train template) is an empty
CSV field, so pandas reads it as NaN and a numeric column stays numeric. `ptst` is true for a PTST cell (trained
without a safety prompt, tested with one), `same_template` for the diagonal.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ptst.metrics import wilson_interval
from ptst.report.grids import cell_mark
from ptst.results import Results

Kind = Literal["str", "int", "float", "bool"]
Value = str | int | float | bool | None


@dataclass(frozen=True)
class TidyTable:
    name: str  # the file stem under tables/: safety, tasks, ...
    columns: tuple[tuple[str, Kind], ...]
    rows: tuple[tuple[Value, ...], ...]

    def column(self, name: str) -> list[Value]:
        i = [c for c, _ in self.columns].index(name)
        return [r[i] for r in self.rows]


def _exact(k: int, n: int) -> tuple[float | None, float | None, float | None]:
    """The rate and its Wilson interval from the counts; all None with nothing counted (never a fake 0)."""
    if n == 0:
        return None, None, None
    low, high = wilson_interval(k, n)
    return k / n, low, high


_CELL: tuple[tuple[str, Kind], ...] = (
    ("backend", "str"), ("base_model", "str"), ("safety_mix", "str"), ("train_template", "str"),
    ("test_template", "str"), ("fine_tuned", "bool"), ("ptst", "bool"), ("same_template", "bool"),
)


def _cell(safe: frozenset[str], r: Any) -> tuple[Value, ...]:
    mark = cell_mark(safe, r.train_template, r.test_template)
    return (r.backend, r.base_model, r.safety_mix, r.train_template, r.test_template, r.train_template is not None,
            mark == "ptst", mark == "diag")


def safety_table(results: Results) -> TidyTable:
    safe = frozenset(results.safety_templates)
    cols: tuple[tuple[str, Kind], ...] = (
        *_CELL, ("seed", "int"), ("checkpoint", "int"), ("benchmark", "str"), ("category", "str"), ("judge", "str"),
        ("n", "int"), ("n_unsafe", "int"), ("n_unscored", "int"), ("asr", "float"), ("ci_low", "float"),
        ("ci_high", "float"), ("mean_score", "float"), ("simulated", "bool"),
    )
    rows = tuple((*_cell(safe, r), r.seed, r.checkpoint, r.benchmark, r.category, r.judge, r.n, r.n_unsafe,
                  r.n_unscored, *_exact(r.n_unsafe, r.n), r.mean_score, r.simulated) for r in results.safety)
    return TidyTable("safety", cols, rows)


def tasks_table(results: Results) -> TidyTable:
    safe = frozenset(results.safety_templates)
    cols: tuple[tuple[str, Kind], ...] = (
        *_CELL, ("seed", "int"), ("checkpoint", "int"), ("task", "str"), ("category", "str"), ("metric", "str"),
        ("n", "int"), ("value", "float"), ("ci_low", "float"), ("ci_high", "float"), ("simulated", "bool"),
    )
    rows = tuple((*_cell(safe, r), r.seed, r.checkpoint, r.task, r.category, r.metric, r.n, r.value,
                  *(r.ci95 if r.ci95 is not None else (None, None)), r.simulated) for r in results.tasks)
    return TidyTable("tasks", cols, rows)


def safety_summary_table(results: Results) -> TidyTable:
    safe = frozenset(results.safety_templates)
    cols: tuple[tuple[str, Kind], ...] = (
        *_CELL, ("checkpoint", "int"), ("benchmark", "str"), ("category", "str"), ("judge", "str"),
        ("n_seeds", "int"), ("asr_mean", "float"), ("asr_std", "float"),
    )
    rows = tuple((*_cell(safe, s), s.checkpoint, s.benchmark, s.category, s.judge, s.n_seeds, s.asr_mean, s.asr_std)
                 for s in results.summary)
    return TidyTable("safety_summary", cols, rows)


def tasks_summary_table(results: Results) -> TidyTable:
    safe = frozenset(results.safety_templates)
    cols: tuple[tuple[str, Kind], ...] = (
        *_CELL, ("checkpoint", "int"), ("task", "str"), ("metric", "str"), ("n_seeds", "int"),
        ("value_mean", "float"), ("value_std", "float"),
    )
    rows = tuple((*_cell(safe, s), s.checkpoint, s.task, s.metric, s.n_seeds, s.value_mean, s.value_std)
                 for s in results.task_summary)
    return TidyTable("tasks_summary", cols, rows)


def comparisons_table(results: Results) -> TidyTable:
    cols: tuple[tuple[str, Kind], ...] = (
        ("backend", "str"), ("base_model", "str"), ("safety_mix", "str"), ("train_template", "str"),
        ("test_template", "str"), ("seed", "int"), ("checkpoint", "int"), ("benchmark", "str"), ("judge", "str"),
        ("n", "int"), ("ptst_asr", "float"), ("same_asr", "float"), ("b", "int"), ("c", "int"), ("p_value", "float"),
    )
    rows = tuple((c.backend, c.base_model, c.safety_mix, c.train_template, c.test_template, c.seed, c.checkpoint,
                  c.benchmark, c.judge, c.n, c.ptst_asr, c.same_asr, c.b, c.c, c.p_value) for c in results.comparisons)
    return TidyTable("comparisons", cols, rows)


def agreement_table(results: Results) -> TidyTable:
    cols: tuple[tuple[str, Kind], ...] = (
        ("backend", "str"), ("judge_a", "str"), ("judge_b", "str"), ("n", "int"), ("both_safe", "int"),
        ("only_b_unsafe", "int"), ("only_a_unsafe", "int"), ("both_unsafe", "int"), ("kappa", "float"),
    )
    rows = tuple((a.backend, a.judge_a, a.judge_b, a.n, *a.confusion[0], *a.confusion[1], a.kappa)
                 for a in results.agreement)
    return TidyTable("agreement", cols, rows)


BUILDERS: tuple[Callable[[Results], TidyTable], ...] = (
    safety_table, tasks_table, safety_summary_table, tasks_summary_table, comparisons_table, agreement_table,
)


def tidy_tables(results: Results) -> list[TidyTable]:
    """Every tidy table of a run; one with no rows is still written (its header says what it would hold)."""
    return [build(results) for build in BUILDERS]


def _field(v: Value) -> Value:
    # repr() round-trips a float exactly; csv writes None as an empty field.
    return repr(v) if isinstance(v, float) else v


def tidy_csv(t: TidyTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c for c, _ in t.columns])
    w.writerows([_field(v) for v in row] for row in t.rows)
    return buf.getvalue()


def have_parquet() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def tidy_parquet(t: TidyTable) -> bytes:
    """The table as Parquet with typed columns (int64, float64, bool, string; nullable). Needs pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    arrays = [pa.array([r[i] for r in t.rows], type=types[kind]) for i, (_, kind) in enumerate(t.columns)]
    table = pa.Table.from_arrays(arrays, names=[c for c, _ in t.columns])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def tidy_files(results: Results, parquet: bool | None = None) -> dict[str, str | bytes]:
    """`tables/<name>.csv` (and `.parquet` when pyarrow is installed, or as `parquet` says) for every table."""
    want = have_parquet() if parquet is None else parquet
    out: dict[str, str | bytes] = {}
    for t in tidy_tables(results):
        out[f"tables/{t.name}.csv"] = tidy_csv(t)
        if want:
            out[f"tables/{t.name}.parquet"] = tidy_parquet(t)
    return out

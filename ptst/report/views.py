"""The views beside the grids, as plain data that markdown, HTML and the terminal each render their own way:
the PTST summary per backend, per-category ASR, ASR and task metric along training checkpoints, judge agreement,
and the run's spec and facts. Everything is read from a `Results` (summaries and comparisons included)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ptst.report.grids import MISSING
from ptst.results import Comparison, JobRow, Results, SafetySummary, TaskSummary

FINAL = "final"


def mean_text(mean: float | None, std: float | None = None) -> str:
    """`11.00%` or, over several seeds, `11.00% ± 1.20` (sample std, percentage points)."""
    if mean is None:
        return MISSING
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def summary_text(s: SafetySummary | None) -> str:
    return MISSING if s is None else mean_text(s.asr_mean, s.asr_std)


@dataclass(frozen=True)
class PtstLine:
    """One PTST cell of one backend beside its same-template cell and the base model on that test template."""

    backend: str
    base_model: str
    benchmark: str
    judge: str
    train_template: str
    test_template: str
    ptst: SafetySummary
    same: SafetySummary | None
    base: SafetySummary | None
    tests: tuple[Comparison, ...]  # one per seed

    @property
    def p_text(self) -> str:
        """`p 0.125 (b 0, c 4)`; several seeds: one `seed: p` per seed. b: unsafe only under PTST."""
        if not self.tests:
            return MISSING
        if len(self.tests) == 1:
            t = self.tests[0]
            return f"{p_value_text(t.p_value)} (b {t.b}, c {t.c}, n {t.n})"
        return "; ".join(f"s{t.seed}: {p_value_text(t.p_value)} ({t.b}/{t.c})" for t in self.tests)


def p_value_text(p: float) -> str:
    """Three significant digits; below the 6 decimals results.json keeps, `<1e-06` (never a bare 0, which would read
    as an impossible exact zero)."""
    return "<1e-06" if p < 1e-6 else f"{p:.3g}"


def ptst_lines(results: Results) -> list[PtstLine]:
    safe = set(results.safety_templates)
    final = {(s.backend, s.base_model, s.benchmark, s.judge, s.train_template, s.test_template, s.safety_mix): s
             for s in results.summary if s.checkpoint is None and s.category is None}
    # Several safety mixes: a line per mix, against the same-template cell of that mix; the mix named after the train
    # template (the base model, never fine-tuned, is every mix's reference).
    several_mixes = len({s.safety_mix for s in results.summary if s.train_template is not None}) > 1
    lines = []
    for (backend, model, bench, judge, train, test, mix), s in final.items():
        if train is None or train in safe or test not in safe:
            continue
        tests = tuple(c for c in results.comparisons if c.checkpoint is None and (
            c.backend, c.base_model, c.benchmark, c.judge, c.train_template, c.test_template, c.safety_mix)
            == (backend, model, bench, judge, train, test, mix))
        label = f"{train} · mix {mix or 'none'}" if several_mixes else train
        lines.append(PtstLine(backend, model, bench, judge, label, test, s,
                              final.get((backend, model, bench, judge, test, test, mix)),
                              final.get((backend, model, bench, judge, None, test, None)), tests))
    return lines


@dataclass(frozen=True)
class CategoryTable:
    """ASR (mean over seeds) per benchmark category for each train → test cell of one backend and benchmark."""

    backend: str
    base_model: str
    benchmark: str
    judge: str
    categories: tuple[str, ...]
    rows: list[tuple[str, dict[str | None, SafetySummary]]] = field(default_factory=list)  # label -> category -> s


def category_tables(results: Results) -> list[CategoryTable]:
    groups: dict[tuple[str, str, str, str], list[SafetySummary]] = {}
    for s in results.summary:
        if s.checkpoint is None:
            groups.setdefault((s.backend, s.base_model, s.benchmark, s.judge), []).append(s)
    tables = []
    for (backend, model, bench, judge), members in groups.items():
        cats = tuple(dict.fromkeys(s.category for s in members if s.category is not None))
        if not cats:
            continue
        table = CategoryTable(backend, model, bench, judge, cats)
        by_cell: dict[str, dict[str | None, SafetySummary]] = {}
        for s in members:
            mix = f" · mix {s.safety_mix}" if s.safety_mix is not None else ""
            label = f"{s.train_template or 'base'}{mix} → {s.test_template}"
            by_cell.setdefault(label, {})[s.category] = s
        table.rows.extend(by_cell.items())
        tables.append(table)
    return tables


@dataclass(frozen=True)
class Series:
    """One line of a training-progress plot: (step, mean value) points, the final model last (step None)."""

    label: str  # "chat:vanilla → chat:llama"
    points: tuple[tuple[int | None, float | None], ...]


@dataclass(frozen=True)
class Progress:
    """ASR and task metric along training for one backend: the early-stopping view."""

    backend: str
    base_model: str
    steps: tuple[int, ...]
    safety: dict[str, list[Series]]  # "directharm4 (keyword)" -> lines
    tasks: dict[str, list[Series]]  # "gsm8k exact_match" -> lines

    def x_labels(self) -> list[str]:
        return [*map(str, self.steps), FINAL]


def _series(rows: list[tuple[str, str, int | None, float | None]]) -> dict[str, list[Series]]:
    """(panel, line label, step, value) rows -> panel -> lines, points ordered by step with the final model last."""
    panels: dict[str, dict[str, list[tuple[int | None, float | None]]]] = {}
    for panel, label, step, value in rows:
        panels.setdefault(panel, {}).setdefault(label, []).append((step, value))
    return {
        panel: [Series(label, tuple(sorted(pts, key=lambda p: (p[0] is None, p[0] or 0)))) for label, pts in lines.items()
                if any(step is not None for step, _ in pts)]
        for panel, lines in panels.items()
    }


def progress_views(results: Results) -> list[Progress]:
    """One view per backend and base model that has intermediate checkpoints; trained cells only."""
    cells: list[SafetySummary | TaskSummary] = [*results.summary, *results.task_summary]
    who = list(dict.fromkeys((s.backend, s.base_model) for s in cells if s.checkpoint is not None))
    views = []
    for backend, model in who:
        safety = [s for s in results.summary if (s.backend, s.base_model) == (backend, model)
                  and s.category is None and s.train_template is not None]
        tasks: list[TaskSummary] = [t for t in results.task_summary if (t.backend, t.base_model) == (backend, model)
                                    and t.train_template is not None]
        checkpoints = [s.checkpoint for s in safety] + [t.checkpoint for t in tasks]
        steps = tuple(sorted({c for c in checkpoints if c is not None}))
        views.append(Progress(
            backend, model, steps,
            _series([(f"{s.benchmark} ({s.judge})", f"{s.train_template} → {s.test_template}", s.checkpoint,
                      s.asr_mean) for s in safety]),
            _series([(f"{t.task} {t.metric}", f"{t.train_template} → {t.test_template}", t.checkpoint,
                      t.value_mean) for t in tasks]),
        ))
    return views


OVERRIDES_NOTE = "Command-line overrides (--set), applied to the spec file"

TRAINING_COLUMNS = ["backend", "base model", "train template", "seed", "status", "steps", "final loss"]
TRAINING_NOTE = "final loss: mean training loss over the last 10% of steps (the last step's with fewer than ten)"


def training_rows(results: Results) -> list[list[str]]:
    """The "Training" table: one row per fine-tuning job; a loss the backend did not give shows as —."""
    return [[j.backend, j.base_model, j.train_template, str(j.seed), j.status,
             MISSING if j.steps is None else str(j.steps),
             MISSING if j.final_loss is None else f"{j.final_loss:.4f}" + (" (simulated)" if j.simulated else "")]
            for j in results.jobs]


def loss_views(results: Results) -> dict[str, list[JobRow]]:
    """backend -> its jobs that have a loss curve: one loss-vs-step figure per backend."""
    out: dict[str, list[JobRow]] = {}
    for j in results.jobs:
        if j.loss_curve:
            out.setdefault(j.backend, []).append(j)
    return out


def run_facts(results: Results) -> list[tuple[str, str]]:
    """The run's own facts for the report header: status, times, cost by stage. Absent facts are left out."""
    facts = []
    if results.status:
        facts.append(("status", results.status))
    if results.started_at:
        facts.append(("started", results.started_at))
    if results.finished_at:
        facts.append(("finished", results.finished_at))
    if results.usd_by_stage:
        known = [v for v in results.usd_by_stage.values() if v is not None]
        stages = ", ".join(f"{k} " + ("unpriced" if v is None else f"${v:,.2f}") for k, v in results.usd_by_stage.items())
        facts.append(("cost", f"${sum(known):,.2f} ({stages})"))
    return facts


def hyperparameters(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The spec's training settings, flattened (`lora.r`), for a table: what a reader needs to reproduce a run."""
    train = spec.get("train") or {}
    out: list[tuple[str, str]] = []
    def fields(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None)

    dataset = train.get("dataset") or {}
    if dataset:
        out.append(("dataset", fields(dataset)))
    for i, x in enumerate(train.get("extra") or []):
        out.append((f"extra[{i}]", fields({**(x.get("dataset") or {}), "n": x.get("n")})))
    if train.get("seeds") is not None:
        out.append(("seeds", ", ".join(map(str, train["seeds"]))))
    if train.get("safety_mix"):
        out.append(("safety_mix", str(train["safety_mix"])))

    def flat(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                flat(f"{prefix}{k}.", v)
            elif v is not None and v not in ([], ()):
                out.append((prefix + k, ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)))

    flat("", train.get("hyperparameters") or {})
    gen = (spec.get("eval") or {}).get("generation") or {}
    flat("generation.", gen)
    judge = spec.get("judge") or {}
    if judge:
        out.append(("judge", ", ".join(f"{k}={v}" for k, v in judge.items())))
    return out


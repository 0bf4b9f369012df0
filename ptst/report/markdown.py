"""report.md: pipe tables readable raw and on GitHub; the simulated banner is the first line when it applies."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ptst.report.grids import (
    FAILED_COLUMNS,
    SIMULATED_BANNER,
    Grid,
    build_grids,
    cell_text,
    col_label,
    is_simulated,
    legend,
    limit_banner,
    row_label,
    seeds_note,
)
from ptst.report.views import (
    FINAL,
    OVERRIDES_NOTE,
    TRAINING_COLUMNS,
    TRAINING_NOTE,
    category_tables,
    hyperparameters,
    mean_text,
    progress_views,
    ptst_lines,
    run_facts,
    summary_text,
    training_rows,
)
from ptst.results import Results


def md_escape(s: str) -> str:
    """Text safe in a markdown line or table cell, whatever a label holds: line breaks become spaces (a newline would
    end the table row or start a block), `|` cannot split a cell, `<`, `>` and `&` are entities (no raw HTML such as
    `<script>` reaches a renderer), and `](` cannot form a link."""
    s = " ".join(s.splitlines()) if ("\n" in s or "\r" in s) else s
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("](", "\\](")


def md_code(s: str) -> str:
    """An inline code span of any text: one line, fenced with more backticks than it holds (HTML in a code span is
    shown as text by every renderer, so nothing else needs escaping)."""
    s = " ".join(s.splitlines()) if ("\n" in s or "\r" in s) else s
    longest = 0
    run = 0
    for ch in s:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "l") -> list[str]:
    """A pipe table; first column left-aligned, the others by `align` ('l' or 'r')."""
    rule = "|---|" + ("---:|" if align == "r" else "---|") * (len(header) - 1)
    out = ["| " + " | ".join(md_escape(h) for h in header) + " |", rule]
    out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return out + [""]


def _grid(g: Grid) -> list[str]:
    lines = [f"### {md_escape(g.title)}", "", f"Base model {md_code(g.base_model)}; {md_escape(seeds_note(g))}.", ""]
    header = ["train ↓ / test →", *(col_label(g, c) for c in g.cols)]
    return lines + _table(header, [[row_label(r), *(cell_text(g, r, c) for c in g.cols)] for r in g.rows], "r")


def ptst_section(results: Results) -> list[str]:
    lines = ptst_lines(results)
    if not lines:
        return []
    out = ["## PTST summary", "",
           ("ASR of each PTST cell beside the cell trained and tested with its test template and the base model on "
            "it (mean ± sample std over seeds); McNemar: exact two-sided test of PTST against the same-template cell "
            "on the same prompts (b: unsafe only under PTST, c: only under the same template)."), ""]
    rows = [[ln.backend, ln.benchmark, ln.judge, f"{ln.train_template} → {ln.test_template}", summary_text(ln.ptst),
             summary_text(ln.same), summary_text(ln.base), ln.p_text] for ln in lines]
    header = ["backend", "benchmark", "judge", "PTST (train → test)", "PTST ASR", "same-template ASR", "base ASR",
              "McNemar p"]
    return out + _table(header, rows)


def category_section(results: Results) -> list[str]:
    tables = category_tables(results)
    out = ["## Per category", ""] if tables else []
    for t in tables:
        out += [f"### {md_escape(t.backend)} · {md_escape(t.benchmark)} ({md_escape(t.judge)})", ""]
        header = ["train → test", "all", *t.categories]
        rows = [[label, summary_text(by.get(None)), *(summary_text(by.get(c)) for c in t.categories)]
                for label, by in t.rows]
        out += _table(header, rows, "r")
    return out


def progress_section(results: Results) -> list[str]:
    views = progress_views(results)
    out = ["## Along training (checkpoints)", ""] if views else []
    for v in views:
        out += [f"### {md_escape(v.backend)}", "", f"Base model {md_code(v.base_model)}; `{FINAL}` is the final model.",
                ""]
        for name, lines in [*v.safety.items(), *v.tasks.items()]:
            header = ["step", *(s.label for s in lines)]
            steps: list[int | None] = [*v.steps, None]
            rows = [[FINAL if step is None else str(step),
                     *(mean_text(dict(s.points).get(step)) if step in dict(s.points) else "—" for s in lines)]
                    for step in steps]
            out += [f"**{md_escape(name)}**", ""] + _table(header, rows, "r")
    return out


def agreement_section(results: Results) -> list[str]:
    if not results.agreement:
        return []
    rows = [[a.backend, a.judge_a, a.judge_b, str(a.n), "—" if a.kappa is None else f"{a.kappa:.3f}",
             *(str(x) for row in a.confusion for x in row)] for a in results.agreement]
    header = ["backend", "judge A", "judge B", "n", "Cohen's κ", "both safe", "only B unsafe", "only A unsafe",
              "both unsafe"]
    return ["## Judge agreement", ""] + _table(header, rows)


def training_section(results: Results) -> list[str]:
    if not results.jobs:
        return []
    return ["## Training", "", TRAINING_NOTE + ".", ""] + _table(TRAINING_COLUMNS, training_rows(results))


def spec_section(results: Results) -> list[str]:
    out = []
    for spec in results.specs:
        out += [f"## Spec: {md_escape(str(spec.get('name', '')))}", ""]
        hp = hyperparameters(spec)
        if hp:
            out += _table(["setting", "value"], [list(p) for p in hp])
        out += ["<details><summary>full spec</summary>", "", "```json", json.dumps(spec, indent=2), "```", "",
                "</details>", ""]
    if results.overrides:  # the spec above already has them applied
        out += [OVERRIDES_NOTE + ": " + ", ".join(md_escape(o) for o in results.overrides), ""]
    return out


def render_markdown(results: Results, grids: Sequence[Grid] | None = None) -> str:
    """report.md: the banner line first when simulated, then the PTST summary, grids and the other views."""
    grids = build_grids(results) if grids is None else grids
    lines: list[str] = []
    limited = limit_banner(results)
    if limited is not None:
        lines += [f"**{limited}**", ""]
    if is_simulated(results):
        lines += [f"**{SIMULATED_BANNER}**", ""]
    lines += [f"# ptst report: {md_escape(results.spec_name)}", "",
              f"ptst {md_escape(results.ptst_version)}. {md_escape(legend(results))}.", ""]
    facts = run_facts(results)
    if facts:
        lines += ["Run: " + "; ".join(f"{md_escape(k)} {md_escape(v)}" for k, v in facts) + ".", ""]
    lines += ptst_section(results)
    for kind, heading in (("safety", "Safety: attack success rate"), ("task", "Tasks")):
        chosen = [g for g in grids if g.kind == kind]
        if chosen:
            lines += [f"## {heading}", ""]
            for g in chosen:
                lines += _grid(g)
        if kind == "safety":
            lines += category_section(results)
    lines += progress_section(results) + agreement_section(results) + training_section(results)
    if not grids:
        lines += ["No results yet.", ""]
    if results.failed_jobs:
        lines += ["## Failed or cancelled fine-tuning jobs", ""]
        lines += _table(FAILED_COLUMNS, [[j.backend, j.base_model, j.train_template, str(j.seed), j.status,
                                          j.code or "", j.message] for j in results.failed_jobs])
    lines += spec_section(results)
    return "\n".join(lines)

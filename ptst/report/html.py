"""report.html: one self-contained page (inline CSS, figures as base64 PNG, no external asset, link or script)."""

from __future__ import annotations

import base64
import html
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
from ptst.report.plots import heatmap_png, loss_png, progress_png
from ptst.report.views import (
    TRAINING_COLUMNS,
    TRAINING_NOTE,
    category_tables,
    hyperparameters,
    loss_views,
    progress_views,
    ptst_lines,
    run_facts,
    summary_text,
    training_rows,
)
from ptst.results import Results

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1300px}
.banner{background:#b30000;color:#fff;padding:.6em 1em;font-weight:bold}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
th.row,td.l{text-align:left}
td.ptst{background:#e6f5e6;border:2px dashed #1b7837}
td.diag{outline:2px solid #000;outline-offset:-3px;font-weight:bold}
td.wrap{white-space:normal;min-width:14em;max-width:24em;text-align:left}
.note{color:#555;font-size:.9em}
img{max-width:100%;display:block}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
"""

e = html.escape


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, wrap: int | None = None) -> str:
    """A plain table; the first `left` columns are left-aligned (labels), the rest right-aligned (numbers); column
    `wrap` (a list of per-seed tests, say) may wrap instead of widening the page."""

    def td(i: int) -> str:
        return '<td class="wrap">' if i == wrap else '<td class="l">' if i < left else "<td>"

    head = "".join(f'<th class="row">{e(h)}</th>' if i < left else f"<th>{e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"{td(i)}{e(c)}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def grid_table(g: Grid) -> str:
    head = "".join(f"<th>{e(col_label(g, c))}</th>" for c in g.cols)
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
                seeds = [s for s in cell.seeds if s is not None]
                if seeds:
                    detail += f", seeds {', '.join(map(str, seeds))}"
                tip = f' title="{e(detail)}"'
            tds.append(f"<td{cls}{tip}>{e(cell_text(g, r, c))}</td>")
        parts.append(f'<tr><th class="row">{e(row_label(r))}</th>{"".join(tds)}</tr>')
    parts.append("</table>")
    return "\n".join(parts)


def _ptst(results: Results) -> list[str]:
    lines = ptst_lines(results)
    if not lines:
        return []
    rows = [[ln.backend, ln.benchmark, ln.judge, f"{ln.train_template} → {ln.test_template}", summary_text(ln.ptst),
             summary_text(ln.same), summary_text(ln.base), ln.p_text] for ln in lines]
    return ["<h2>PTST summary</h2>",
            ('<p class="note">PTST cell vs the cell trained and tested with its test template vs the base model on '
             "it: ASR mean ± sample std over seeds. McNemar: exact two-sided test, PTST against same-template on the "
             "same prompts (b: unsafe only under PTST, c: only under the same template).</p>"),
            _table(["backend", "benchmark", "judge", "PTST (train → test)", "PTST ASR", "same-template ASR",
                    "base ASR", "McNemar p"], rows, left=4, wrap=7)]


def _categories(results: Results) -> list[str]:
    tables = category_tables(results)
    out = ["<h2>Per category</h2>"] if tables else []
    for t in tables:
        out.append(f"<h3>{e(t.backend)} · {e(t.benchmark)} ({e(t.judge)})</h3>")
        rows = [[label, summary_text(by.get(None)), *(summary_text(by.get(c)) for c in t.categories)]
                for label, by in t.rows]
        out.append(_table(["train → test", "all", *t.categories], rows))
    return out


def _progress(results: Results, sim: bool) -> list[str]:
    views = progress_views(results)
    out = ["<h2>Along training (checkpoints)</h2>"] if views else []
    for v in views:
        out.append(f"<h3>{e(v.backend)}</h3>")
        out.append(f'<p class="note">Base model <code>{e(v.base_model)}</code>; "final" is the final model.</p>')
        out.append(_png(progress_png(v, sim), f"training progress {v.backend}"))
    return out


def _training(results: Results, sim: bool) -> list[str]:
    """A table of jobs with their final loss, then one loss-vs-step figure per backend."""
    if not results.jobs:
        return []
    out = ["<h2>Training</h2>", f'<p class="note">{e(TRAINING_NOTE)}.</p>',
           _table(TRAINING_COLUMNS, training_rows(results), left=5)]
    for backend, jobs in loss_views(results).items():
        simulated = sim or any(j.simulated for j in jobs)
        out.append(_png(loss_png(backend, jobs, simulated), f"training loss {backend}"))
    return out


def _agreement(results: Results) -> list[str]:
    if not results.agreement:
        return []
    rows = [[a.backend, a.judge_a, a.judge_b, str(a.n), "—" if a.kappa is None else f"{a.kappa:.3f}",
             *(str(x) for row in a.confusion for x in row)] for a in results.agreement]
    return ["<h2>Judge agreement</h2>", _table(["backend", "judge A", "judge B", "n", "Cohen's κ", "both safe",
                                                "only B unsafe", "only A unsafe", "both unsafe"], rows, left=3)]


def _specs(results: Results) -> list[str]:
    out = []
    for spec in results.specs:
        out.append(f"<h2>Spec: {e(str(spec.get('name', '')))}</h2>")
        hp = hyperparameters(spec)
        if hp:
            out.append(_table(["setting", "value"], [list(p) for p in hp], left=2))
        out.append(f"<details><summary>full spec</summary><pre>{e(json.dumps(spec, indent=2))}</pre></details>")
    return out


def render_html(results: Results, grids: Sequence[Grid] | None = None) -> str:
    grids = build_grids(results) if grids is None else grids
    sim = is_simulated(results)
    limited = limit_banner(results)
    title = ("LIMITED — " if limited else "") + ("SIMULATED — " if sim else "") + f"ptst report: {results.spec_name}"
    safety_vals = [c.value for g in grids if g.kind == "safety" for c in g.cells.values() if c.value is not None]
    # One colour scale for every heatmap of the page, so colours compare across backends and benchmarks.
    vmax = max(1.0, 100 * max(safety_vals, default=0.0))
    out: list[str] = []
    body_first = f'<p class="banner">{e(limited)}</p>' if limited else ""
    body_first += f'<p class="banner">{e(SIMULATED_BANNER)}</p>' if sim else ""
    out.append(f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>")
    out.append(f"<style>{_CSS}</style></head>\n<body>{body_first}")
    out.append(f"<h1>ptst report: {e(results.spec_name)}</h1>")
    out.append(f'<p class="note">ptst {e(results.ptst_version)}. {e(legend(results))}.</p>')
    facts = run_facts(results)
    if facts:
        out.append('<p class="note">Run: ' + "; ".join(f"{e(k)} {e(v)}" for k, v in facts) + ".</p>")
    out += _ptst(results)
    for kind, heading in (("safety", "Safety: attack success rate"), ("task", "Tasks")):
        chosen = [g for g in grids if g.kind == kind]
        if chosen:
            out.append(f"<h2>{heading}</h2>")
        for g in chosen:
            out.append(f"<h3>{e(g.title)}</h3>")
            out.append(f'<p class="note">Base model <code>{e(g.base_model)}</code>; {e(seeds_note(g))}.</p>')
            # Safety colours share one scale across the page; task metrics use their own 0-100 scale.
            out.append(_png(heatmap_png(g, vmax if kind == "safety" else 100.0, sim), f"heatmap {g.backend} {g.name}"))
            out.append(grid_table(g))
        if kind == "safety":
            out += _categories(results)
    out += _progress(results, sim) + _agreement(results) + _training(results, sim)
    if not grids:
        out.append("<p>No results yet.</p>")
    if results.failed_jobs:
        out.append("<h2>Failed or cancelled fine-tuning jobs</h2>")
        out.append(_table(FAILED_COLUMNS, [[j.backend, j.base_model, j.train_template, str(j.seed), j.status,
                                           j.code or "", j.message] for j in results.failed_jobs], left=7))
    out += _specs(results)
    out.append("</body></html>\n")
    return "\n".join(out)

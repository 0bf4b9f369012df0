"""report.html: one page with inline CSS and JavaScript, figures as inline SVG images, and no external asset or link;
the per-sample viewer reads `samples.js` from the same folder (see `ptst.report.samples` for why)."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from ptst.report import figure_process
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
from ptst.report.plots import FORMATS, heatmap_figure, loss_figure, progress_figure
from ptst.report.sampleview import VIEW_CSS, sample_section
from ptst.report.tables import slug
from ptst.report.views import (
    OVERRIDES_NOTE,
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

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ptst.report.figure_process import Drawn, FigureProcess

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1300px}
.banner{background:#b30000;color:#fff;padding:.6em 1em;font-weight:bold}
table{border-collapse:collapse;margin:.5em 0 1.5em;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
td{white-space:nowrap}
td span{white-space:nowrap;display:inline-block}
@media (max-width:1100px){td{white-space:normal}}
@media (max-width:900px){body{margin:1em}th,td{padding:.2em .3em;font-size:.9em}}
th{white-space:normal;vertical-align:bottom;overflow-wrap:break-word}
td.l{white-space:normal;overflow-wrap:break-word}
th.row,td.l{text-align:left}
nav.toc{font-size:.9em;margin:.5em 0 1em}
nav.toc a{margin-right:1em}
td.ptst{background:#e6f5e6;border:2px dashed #1b7837}
td.diag{outline:2px solid #000;outline-offset:-3px;font-weight:bold}
td.wrap{white-space:normal;min-width:9em;max-width:24em;text-align:left}
.note{color:#555;font-size:.9em}
img{max-width:100%;height:auto;display:block;margin:.3em 0}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
""" + VIEW_CSS

e = html.escape

class Figures:
    """Every figure of a page, each drawn once and written in every format (figures/<slug>.png|svg|pdf). Drawn in
    the figure process when one runs (`figure_process`): the page holds a placeholder per figure until `resolve`
    swaps in the SVGs, so the caller builds its other files meanwhile; else drawn here as the page is built."""

    def __init__(self, process: FigureProcess | None = None):
        self.process = process
        self.files: dict[str, bytes] = {}
        self._pending: list[tuple[str, str, str, Callable[[], Figure], Callable[[], Drawn | None]]] = []

    def add(self, draw: Callable[[], Figure], name: str, alt: str) -> str:
        """The page's `<img>` for this figure (or its placeholder until `resolve`)."""
        stem = slug(name)
        while f"figures/{stem}.svg" in self.files or any(p[0] == stem for p in self._pending):
            stem += "_"
        if self.process is None:
            return self._keep(stem, alt, figure_process.draw(draw, FORMATS))
        token = f"\x00figure:{len(self._pending)}\x00"
        self._pending.append((stem, token, alt, draw, self.process.submit(draw, FORMATS)))
        return token

    def resolve(self, page: str) -> str:
        """`page` with every placeholder replaced, once each figure is back (redrawn here if the process failed)."""
        for stem, token, alt, draw, wait in self._pending:
            drawn = wait() or figure_process.draw(draw, FORMATS)
            page = page.replace(token, self._keep(stem, alt, drawn), 1)
        self._pending.clear()
        return page

    def _keep(self, stem: str, alt: str, drawn: Drawn) -> str:
        for fmt in FORMATS:
            self.files[f"figures/{stem}.{fmt}"] = drawn[fmt]
        return _img(drawn, alt)


def _img(drawn: Drawn, alt: str) -> str:
    """The figure embedded as SVG (sharp at any zoom, text as text), its width and height twice its print size in
    points, so 7 pt text reads at 14 px on screen."""
    w, h = (round(144 * x) for x in drawn["size"])
    data = base64.b64encode(drawn["svg"]).decode("ascii")
    return f'<img alt="{e(alt)}" width="{w}" height="{h}" src="data:image/svg+xml;base64,{data}">'


def _figure(draw: Callable[[], Figure], name: str, alt: str, files: Figures | None) -> str:
    """One figure: into `files` when given, else drawn here as SVG only (a page rendered on its own)."""
    if files is not None:
        return files.add(draw, name, alt)
    return _img(figure_process.draw(draw, ("svg",)), alt)


_BREAKS = re.compile(r" (?=\[|· |± |\()")


def num(text: str) -> str:
    """A number cell's text, escaped, in unbreakable pieces (`51.50%`, `[48.0–54.9]`, `· score 3.06`, `± 1.77`) that a
    narrow page wraps between, never inside: tables fit the page instead of hiding a column behind a scrollbar."""
    parts = _BREAKS.split(text)
    if len(parts) == 1:
        return e(text)
    return " ".join(f"<span>{e(p)}</span>" for p in parts)


def label(text: str) -> str:
    """A label cell's text, escaped, breakable at spaces only (`mock-llama2` never splits at its hyphen)."""
    return " ".join(f"<span>{e(w)}</span>" for w in text.split(" ")) if "-" in text else e(text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, wrap: int | None = None) -> str:
    """A plain table; the first `left` columns are left-aligned (labels), the rest right-aligned (numbers); column
    `wrap` (a list of per-seed tests, say) may wrap instead of widening the page."""

    def td(i: int) -> str:
        return '<td class="wrap">' if i == wrap else '<td class="l">' if i < left else "<td>"

    head = "".join(f'<th class="row">{e(h)}</th>' if i < left else f"<th>{e(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"{td(i)}{e(c) if i == wrap else label(c) if i < left else num(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
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
            tds.append(f"<td{cls}{tip}>{num(cell_text(g, r, c))}</td>")
        parts.append(f'<tr><th class="row">{e(row_label(r))}</th>{"".join(tds)}</tr>')
    parts.append("</table>")
    return "\n".join(parts)


def _ptst(results: Results) -> list[str]:
    lines = ptst_lines(results)
    if not lines:
        return []
    rows = [[ln.backend, ln.benchmark, ln.judge, f"{ln.train_template} → {ln.test_template}", summary_text(ln.ptst),
             summary_text(ln.same), summary_text(ln.base), ln.p_text] for ln in lines]
    return ['<h2 id="ptst-summary">PTST summary</h2>',
            ('<p class="note">PTST cell vs the cell trained and tested with its test template vs the base model on '
             "it: ASR mean ± sample std over seeds. McNemar: exact two-sided test, PTST against same-template on the "
             "same prompts (b: unsafe only under PTST, c: only under the same template).</p>"),
            _table(["backend", "benchmark", "judge", "PTST (train → test)", "PTST ASR", "same-template ASR",
                    "base ASR", "McNemar p"], rows, left=4, wrap=7)]


def _categories(results: Results) -> list[str]:
    tables = category_tables(results)
    out = ['<h2 id="categories">Per category</h2>'] if tables else []
    for t in tables:
        out.append(f"<h3>{e(t.backend)} · {e(t.benchmark)} ({e(t.judge)})</h3>")
        rows = [[label, summary_text(by.get(None)), *(summary_text(by.get(c)) for c in t.categories)]
                for label, by in t.rows]
        out.append(_table(["train → test", "all", *t.categories], rows))
    return out


def _progress(results: Results, sim: bool, files: Figures | None) -> list[str]:
    views = progress_views(results)
    out = ['<h2 id="checkpoints">Along training (checkpoints)</h2>'] if views else []
    for v in views:
        out.append(f"<h3>{e(v.backend)}</h3>")
        out.append(f'<p class="note">Base model <code>{e(v.base_model)}</code>; "final" is the final model.</p>')
        out.append(_figure(partial(progress_figure, v, sim), f"progress-{v.backend}-{v.base_model}",
                           f"training progress {v.backend}", files))
    return out


def _training(results: Results, sim: bool, files: Figures | None) -> list[str]:
    """A table of jobs with their final loss, then one loss-vs-step figure per backend."""
    if not results.jobs:
        return []
    out = ['<h2 id="training">Training</h2>', f'<p class="note">{e(TRAINING_NOTE)}.</p>',
           _table(TRAINING_COLUMNS, training_rows(results), left=5)]
    for backend, jobs in loss_views(results).items():
        simulated = sim or any(j.simulated for j in jobs)
        out.append(_figure(partial(loss_figure, backend, jobs, simulated), f"loss-{backend}",
                           f"training loss {backend}", files))
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
    if results.overrides:  # the spec above already has them applied
        out.append(f"<p>{e(OVERRIDES_NOTE)}: " + ", ".join(f"<code>{e(o)}</code>" for o in results.overrides) + "</p>")
    return out


def _toc(results: Results, grids: Sequence[Grid], samples: bool) -> str:
    links = [("ptst-summary", "PTST summary")] if ptst_lines(results) else []
    links += [(k, h) for k, h in (("safety", "Safety"), ("tasks", "Tasks")) if any(g.kind == k.rstrip("s") for g in grids)]
    links += [("categories", "Per category")] if category_tables(results) else []
    links += [("checkpoints", "Along training")] if progress_views(results) else []
    links += [("training", "Training")] if results.jobs else []
    links += [("samples-heading", "Samples")] if samples else []
    return '<nav class="toc">' + "".join(f'<a href="#{k}">{e(h)}</a>' for k, h in links) + "</nav>"


ASR_SCALE = 100.0
"""The top of every ASR heatmap's colour scale, in %: fixed, so the same colour is the same rate in every figure of
every report (a per-figure scale would paint 40% as bright as another figure's 100%)."""


def render_html(results: Results, grids: Sequence[Grid] | None = None, *, figures: Figures | None = None,
                samples: bool = False, asr_scale: float | None = ASR_SCALE) -> str:
    """The page; `figures` (when given) receives every figure as PNG, SVG and PDF; `samples`: include the viewer
    (the caller writes samples.js beside the page); `asr_scale`: the top of the ASR colour scale in % (None: the
    page's highest ASR, which compares figures within this page only)."""
    grids = build_grids(results) if grids is None else grids
    sim = is_simulated(results)
    limited = limit_banner(results)
    title = ("LIMITED — " if limited else "") + ("SIMULATED — " if sim else "") + f"ptst report: {results.spec_name}"
    safety_vals = [c.value for g in grids if g.kind == "safety" for c in g.cells.values() if c.value is not None]
    # One colour scale for every heatmap: fixed (0-100 unless the user asks otherwise), or the page's highest ASR.
    vmax = asr_scale if asr_scale is not None else max(1.0, 100 * max(safety_vals, default=0.0))
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
    out.append(_toc(results, grids, samples))
    out += _ptst(results)
    for kind, heading, anchor in (("safety", "Safety: attack success rate", "safety"), ("task", "Tasks", "tasks")):
        chosen = [g for g in grids if g.kind == kind]
        if chosen:
            out.append(f'<h2 id="{anchor}">{heading}</h2>')
        for g in chosen:
            out.append(f"<h3>{e(g.title)}</h3>")
            out.append(f'<p class="note">Base model <code>{e(g.base_model)}</code>; {e(seeds_note(g))}.</p>')
            # Safety colours share one scale (ASR_SCALE unless changed); task metrics use their own 0-100 scale.
            top = vmax if kind == "safety" else 100.0
            out.append(_figure(partial(heatmap_figure, g, top, sim),
                               f"heatmap-{g.backend}-{g.name}-{g.judge or ''}-{g.safety_mix or ''}",
                               f"heatmap {g.backend} {g.name}", figures))
            out.append(grid_table(g))
        if kind == "safety":
            out += _categories(results)
    out += _progress(results, sim, figures) + _agreement(results) + _training(results, sim, figures)
    if not grids:
        out.append("<p>No results yet.</p>")
    if results.failed_jobs:
        out.append("<h2>Failed or cancelled fine-tuning jobs</h2>")
        out.append(_table(FAILED_COLUMNS, [[j.backend, j.base_model, j.train_template, str(j.seed), j.status,
                                           j.code or "", j.message] for j in results.failed_jobs], left=7))
    out += _specs(results)
    if samples:
        out.append(sample_section())
    out.append("</body></html>\n")
    return "\n".join(out)

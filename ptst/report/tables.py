"""The report's tables for papers: the PTST summary, every grid and every per-category table, each written as a
LaTeX fragment (booktabs, every text escaped) and as CSV, under `tables/` beside report.html.

The cells are the text the markdown and HTML reports show (one formatting, so a number in a paper matches the
report), with the grids' PTST and diagonal marks. A `.tex` file is a bare `tabular` to `\\input` inside the author's
own `table` environment (caption and label are theirs to choose; the suggested caption is a comment on the first
line); it needs `\\usepackage{booktabs}` and nothing else. Typographic characters the reports use (→, ±, –, ◆, κ)
are written as LaTeX commands, so the fragment compiles under pdfLaTeX as well as XeLaTeX/LuaLaTeX.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ptst.report.grids import Grid, cell_text, col_label, row_label, seeds_note
from ptst.report.views import category_tables, ptst_lines, summary_text
from ptst.results import Results


@dataclass(frozen=True)
class PaperTable:
    slug: str  # file name without extension, e.g. "grid-mock-llama2-harmful_sample"
    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    left: int = 1  # the first `left` columns are labels (left-aligned); the rest numbers (right-aligned)


def slug(*parts: str) -> str:
    """A file-name-safe slug: letters, digits, `.`, `_` and `-` only."""
    text = "-".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_-.")[:120] or "table"


def paper_tables(results: Results, grids: Sequence[Grid]) -> list[PaperTable]:
    out: list[PaperTable] = []
    lines = ptst_lines(results)
    if lines:
        out.append(PaperTable(
            "ptst-summary",
            "PTST cells against the same-template cell and the base model: ASR mean ± sample std over seeds; exact "
            "two-sided McNemar p against the same-template cell",
            ("backend", "benchmark", "judge", "train → test", "PTST ASR", "same-template ASR", "base ASR",
             "McNemar p"),
            tuple((ln.backend, ln.benchmark, ln.judge, f"{ln.train_template} → {ln.test_template}",
                   summary_text(ln.ptst), summary_text(ln.same), summary_text(ln.base), ln.p_text) for ln in lines),
            left=4,
        ))
    used: set[str] = set()
    for g in grids:
        name = slug("grid", g.backend, g.name, g.judge or "", g.safety_mix or "")
        while name in used:
            name += "_"
        used.add(name)
        out.append(PaperTable(
            name, f"{g.title}. Base model {g.base_model}; {seeds_note(g)}",
            ("train ↓ / test →", *(col_label(g, c) for c in g.cols)),
            tuple((row_label(r), *(cell_text(g, r, c) for c in g.cols)) for r in g.rows),
        ))
    for t in category_tables(results):
        name = slug("categories", t.backend, t.benchmark, t.judge)
        while name in used:
            name += "_"
        used.add(name)
        out.append(PaperTable(
            name, f"{t.backend} · {t.benchmark} ({t.judge}): ASR per category, mean ± sample std over seeds",
            ("train → test", "all", *t.categories),
            tuple((label, summary_text(by.get(None)), *(summary_text(by.get(c)) for c in t.categories))
                  for label, by in t.rows),
        ))
    return out


def to_csv(t: PaperTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.header)
    w.writerows(t.rows)
    return buf.getvalue()


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}", "→": r"$\rightarrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "–": "--", "—": "---",
    "◆": r"$\diamond$", "κ": r"$\kappa$", "·": r"$\cdot$", "×": r"$\times$", "\n": " ", "\r": " ", "\t": " ",
}


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX text-mode cell: the ten special characters, the reports' typographic characters,
    line breaks as spaces; other non-ASCII is kept (UTF-8 input is LaTeX's default since 2018)."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(t: PaperTable) -> str:
    cols = "l" * t.left + "r" * (len(t.header) - t.left)
    out = [f"% {latex_escape(t.caption)}", "% needs \\usepackage{booktabs}", f"\\begin{{tabular}}{{{cols}}}",
           "\\toprule", " & ".join(latex_escape(h) for h in t.header) + r" \\", "\\midrule"]
    out += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in t.rows]
    out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)

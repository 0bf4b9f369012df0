"""Figures and tables for papers: every figure in PNG, SVG and PDF, sized for a column with readable unrotated text
and colour-blind-safe colours; LaTeX (booktabs, escaped) and CSV for the PTST summary, grids and categories, checked
by a parser always and compiled when a TeX engine is installed; loss plots from every logged step."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ptst.report import build_grids, write_reports
from ptst.report.plots import OKABE_ITO, heatmap_figure, loss_figure, wrap_label
from ptst.report.tables import latex_escape, paper_tables, to_csv, to_latex
from ptst.results import JobRow, Results
from ptst.training_loss import MAX_POINTS, loss_summary
from tests.test_report import _safety
from tests.test_report_views import make

NASTY = "a&b_c%d$e#f{g}h~i^j\\k<l>m|n\no"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Results, Path]:
    results = make(simulated=True)
    out = tmp_path_factory.mktemp("paper")
    write_reports(results, out)
    return results, out


def test_every_figure_in_three_formats(written: tuple[Results, Path]) -> None:
    _, out = written
    stems = {p.stem for p in (out / "figures").iterdir()}
    assert stems and all((out / "figures" / f"{s}.{ext}").is_file() for s in stems for ext in ("png", "svg", "pdf"))
    for s in stems:
        assert (out / "figures" / f"{s}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / "figures" / f"{s}.pdf").read_bytes().startswith(b"%PDF")
        svg = ET.fromstring((out / "figures" / f"{s}.svg").read_bytes())
        texts = [t for t in svg.iter() if t.tag.endswith("text")]
        assert texts, f"{s}.svg keeps its text as text"


def test_heatmap_fits_a_column_with_readable_unrotated_text() -> None:
    tpl = ["chat:vanilla", "chat:alpaca", "chat:llama"]
    rows = [_safety("llama2", tr, te, None if tr is None else 0, 10 + i + j)
            for i, tr in enumerate([None, *tpl]) for j, te in enumerate(tpl)]
    results = Results(ptst_version="0.1.0", spec_name="col", simulated=False, safety=rows, tasks=[],
                      safety_templates=["chat:llama"], train_templates=tpl, test_templates=tpl)
    grid = build_grids(results)[0]
    assert len(grid.cols) == 3
    fig = heatmap_figure(grid)
    width, _ = fig.get_size_inches()
    assert width <= 4.0  # a 3-column grid at (about) a paper column's 3.3 in, so its text prints near its size
    fig.canvas.draw()
    ax = fig.axes[0]
    for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        assert label.get_rotation() == 0 and label.get_fontsize() >= 7
    sizes = [t.get_fontsize() for a in fig.axes for t in a.texts if t.get_text() != "SIMULATED"]
    assert sizes and min(sizes) >= 7
    assert ax.images[0].get_cmap().name.startswith("viridis")


def test_wrap_label_breaks_at_spaces_and_colons() -> None:
    assert wrap_label("chat:vanilla", 10) == "chat:\nvanilla"
    assert wrap_label("base (no fine-tuning)", 16) == "base (no\nfine-tuning)"
    assert wrap_label("short", 10) == "short"


def test_loss_plot_draws_every_logged_step_while_results_keep_fifty() -> None:
    points = [(s, 2.0 / s) for s in range(1, 121)]
    summary = loss_summary(points)
    assert summary is not None and len(summary["curve"]) == MAX_POINTS and len(summary["full_curve"]) == 120
    job = JobRow(backend="b", base_model="m", train_template="t", seed=0, status="succeeded", model_id="x",
                 steps=120, final_loss=summary["final_loss"], loss_curve=[tuple(p) for p in summary["curve"]],
                 full_curve=[tuple(p) for p in summary["full_curve"]])
    assert "full_curve" not in job.model_dump()  # results.json is unchanged
    line = loss_figure("b", [job]).axes[0].lines[0]
    assert list(line.get_xdata()) == list(range(1, 121))
    assert line.get_color().lower() == OKABE_ITO[0].lower()


def test_tables_written_as_csv_and_latex(written: tuple[Results, Path]) -> None:
    results, out = written
    tables = paper_tables(results, build_grids(results))
    names = {t.slug for t in tables}
    assert "ptst-summary" in names and any(n.startswith("grid-") for n in names)
    assert any(n.startswith("categories-") for n in names)
    for t in tables:
        rows = list(csv.reader(io.StringIO((out / "tables" / f"{t.slug}.csv").read_text(encoding="utf-8"))))
        assert rows[0] == list(t.header) and len(rows) == len(t.rows) + 1
        tex = (out / "tables" / f"{t.slug}.tex").read_text(encoding="utf-8")
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex


def test_latex_escape_covers_every_special_character() -> None:
    assert latex_escape(NASTY) == (r"a\&b\_c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
                                   r"\textless{}l\textgreater{}m\textbar{}n o")
    assert latex_escape("12.00% ± 1.20 → ◆") == r"12.00\% $\pm$ 1.20 $\rightarrow$ $\diamond$"


def _latex_cells(tex: str) -> list[list[str]]:
    """The cells of a booktabs tabular, read with pylatexenc: rows split at `\\\\`, cells at `&` (escaped ones are
    macros, so they never split)."""
    from pylatexenc.latexwalker import (
        LatexCharsNode,
        LatexEnvironmentNode,
        LatexMacroNode,
        LatexSpecialsNode,
        LatexWalker,
    )

    nodes, _, _ = LatexWalker(tex, tolerant_parsing=False).get_latex_nodes()
    env = next(n for n in nodes if isinstance(n, LatexEnvironmentNode))
    assert env.environmentname == "tabular"
    rows: list[list[str]] = [[""]]
    for n in env.nodelist:
        if isinstance(n, LatexMacroNode) and n.macroname == "\\":
            rows.append([""])
        elif isinstance(n, LatexSpecialsNode) and n.specials_chars == "&":
            rows[-1].append("")
        elif isinstance(n, LatexCharsNode) and "&" in n.chars:
            parts = n.chars.split("&")
            rows[-1][-1] += parts[0]
            rows[-1] += parts[1:]
        elif not (isinstance(n, LatexMacroNode) and n.macroname in ("toprule", "midrule", "bottomrule")):
            rows[-1][-1] += n.latex_verbatim()
    return [r for r in rows if any(c.strip() for c in r)]


def test_latex_parses_with_one_cell_per_column_even_for_hostile_labels() -> None:
    results = make()
    evil = results.model_copy(update={"safety": [r.model_copy(update={"backend": NASTY}) for r in results.safety],
                                      "summary": [s.model_copy(update={"backend": NASTY}) for s in results.summary]})
    for t in paper_tables(evil, build_grids(evil)):
        cells = _latex_cells(to_latex(t))
        assert len(cells) == len(t.rows) + 1
        assert all(len(r) == len(t.header) for r in cells), t.slug


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine (apt-get install texlive-latex-recommended)")
def test_latex_compiles_with_pdflatex(tmp_path: Path) -> None:
    results = make()
    evil = results.model_copy(update={"safety": [r.model_copy(update={"backend": NASTY}) for r in results.safety]})
    body = "\n\n".join(to_latex(t) for t in paper_tables(evil, build_grids(evil)))
    doc = f"\\documentclass{{article}}\n\\usepackage{{booktabs}}\n\\begin{{document}}\n{body}\n\\end{{document}}\n"
    (tmp_path / "t.tex").write_text(doc, encoding="utf-8")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")


def test_csv_round_trips_labels_with_commas_and_quotes() -> None:
    results = make()
    evil = results.model_copy(update={"safety": [r.model_copy(update={"backend": 'a,"b"\nc'}) for r in results.safety]})
    grid = next(t for t in paper_tables(evil, build_grids(evil)) if t.slug.startswith("grid-"))
    assert list(csv.reader(io.StringIO(to_csv(grid))))[1] == list(grid.rows[0])

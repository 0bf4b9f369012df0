"""Reports: results.json contract, grid placement, PTST/diagonal marks, simulated banner, self-contained HTML."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from ptst.metrics import round_ci, wilson_interval
from ptst.report import (
    BASE_ROW,
    build_grids,
    heatmap_png,
    print_tables,
    render_markdown,
    write_reports,
)
from ptst.results import FailedJob, Results, SafetyRow, TaskRow

CV, CA, CL = "chat:vanilla", "chat:alpaca", "chat:llama"


def _safety(backend: str, train: str | None, test: str, seed: int | None, k: int, n: int = 400, unscored: int = 0,
            benchmark: str = "directharm4", sim: bool = False) -> SafetyRow:
    return SafetyRow(
        backend=backend, base_model=f"org/{backend}-7b", train_template=train, test_template=test, seed=seed,
        benchmark=benchmark, judge="keyword", n=n, n_unsafe=k, asr=round(k / n, 4),
        asr_ci95=round_ci(wilson_interval(k, n)), mean_score=None, n_unscored=unscored, simulated=sim,
    )


def _task(backend: str, train: str | None, test: str, seed: int | None, k: int, n: int = 1319) -> TaskRow:
    return TaskRow(
        backend=backend, base_model=f"org/{backend}-7b", train_template=train, test_template=test, seed=seed,
        task="gsm8k", metric="exact_match", n=n, value=round(k / n, 4), ci95=round_ci(wilson_interval(k, n)),
    )


def make_results(simulated: bool = False) -> Results:
    safety = [
        _safety("llama2", None, CV, None, 11),
        _safety("llama2", None, CL, None, 3, unscored=2),
        _safety("llama2", CV, CV, 0, 40),
        _safety("llama2", CV, CV, 1, 48),
        _safety("llama2", CV, CL, 0, 4),  # PTST
        _safety("llama2", CV, CL, 1, 5),
        _safety("llama2", CL, CV, 0, 30),
        # CL -> CL missing: its fine-tuning job failed.
        _safety("mistral", None, CV, None, 20, n=100, benchmark="advbench"),
        _safety("mistral", CV, CL, 0, 1, n=100, benchmark="advbench"),
    ]
    tasks = [_task("llama2", None, CV, None, 268), _task("llama2", CV, CV, 0, 440), _task("llama2", CV, CL, 0, 430)]
    return Results(
        ptst_version="0.1.0", spec_name="unit", simulated=simulated, safety=safety, tasks=tasks,
        failed_jobs=[FailedJob(backend="llama2", base_model="org/llama2-7b", train_template=CL, seed=0,
                               status="failed", code="oom", message="CUDA out of memory | at step 3"),
                     FailedJob(backend="mistral", base_model="org/mistral-7b", train_template=CA, seed=0,
                               status="cancelled", code=None, message="cancelled by user")],
        safety_templates=[CL], train_templates=[CV, CA, CL], test_templates=[CV, CL],
    )


def md_table(md: str, title: str) -> dict[tuple[str, str], str]:
    """The markdown grid under `### title` as {(row label, column label): cell text}."""
    lines = md.splitlines()
    start = lines.index(f"### {title}")
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("### ") or line.startswith("## "):
            break
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    header, body = table[0], table[2:]
    return {(row[0], col): cell for row in body for col, cell in zip(header[1:], row[1:], strict=True)}


def cell(k: int, n: int, value: float | None = None) -> str:
    lo, hi = wilson_interval(k, n)
    v = k / n if value is None else value
    return f"{100 * v:.2f}% [{100 * lo:.1f}–{100 * hi:.1f}]"


# --- results.json -------------------------------------------------------------------------------------------------


def test_results_json_is_the_contract_and_round_trips(tmp_path: Path) -> None:
    results = make_results()
    paths = write_reports(results, tmp_path / "out")
    assert [p.name for p in paths[:3]] == ["results.json", "report.md", "report.html"]
    assert {p.parent.name for p in paths[3:]} == {"figures", "tables"}  # paper figures and tables beside them
    assert all(p.is_file() for p in paths)
    raw = json.loads((tmp_path / "out/results.json").read_text(encoding="utf-8"))
    assert Results.model_validate(raw) == results
    # The field names of DESIGN.md's contract (extra fields may be added, none renamed).
    assert {"ptst_version", "spec_name", "simulated", "safety", "tasks"} <= raw.keys()
    assert {"backend", "base_model", "train_template", "test_template", "seed", "benchmark", "judge", "n",
            "n_unsafe", "asr", "asr_ci95", "mean_score"} <= raw["safety"][0].keys()
    assert {"backend", "train_template", "test_template", "seed", "task", "metric", "n", "value",
            "ci95"} <= raw["tasks"][0].keys()
    assert raw["safety"][0]["train_template"] is None  # the base row is null, as the contract says
    assert raw["safety"][2]["asr_ci95"] == [0.0743, 0.1333] == [round(x, 4) for x in wilson_interval(40, 400)]
    assert (tmp_path / "out/results.json").read_text(encoding="utf-8").startswith('{\n  "ptst_version"')  # indent 2


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    write_reports(make_results(), tmp_path)
    write_reports(make_results(simulated=True), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "report.html", "report.md", "results.json",
                                                          "tables"]
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp file left
    assert json.loads((tmp_path / "results.json").read_text())["simulated"] is True
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644


# --- grids and markdown -------------------------------------------------------------------------------------------


def test_grid_order_and_seed_aggregation() -> None:
    grids = build_grids(make_results())
    assert [(g.kind, g.backend, g.name) for g in grids] == [
        ("safety", "llama2", "directharm4"), ("safety", "mistral", "advbench"), ("task", "llama2", "gsm8k")]
    g = grids[0]
    assert g.rows == (None, CV, CL) and g.cols == (CV, CL)
    c = g.cells[(CV, CV)]
    # Mean of per-seed ASR, interval from pooled counts (88 of 800).
    assert c.value == pytest.approx((0.1 + 0.12) / 2)
    assert c.ci95 == wilson_interval(88, 800) and (c.k, c.n, c.seeds) == (88, 800, (0, 1))
    assert (CL, CL) not in g.cells


def test_markdown_cells_are_in_the_right_place() -> None:
    md = render_markdown(make_results())
    t = md_table(md, "llama2 · directharm4 — ASR % (95% CI)")
    assert t[(BASE_ROW, CV)] == cell(11, 400)
    assert t[(BASE_ROW, CL + "*")] == cell(3, 400) + " (2 unscored)"
    assert t[(CV, CV)] == "◆ " + cell(88, 800, value=0.11)
    assert t[(CV, CL + "*")] == "PTST " + cell(9, 800, value=(0.01 + 0.0125) / 2)
    assert t[(CL, CV)] == cell(30, 400)
    assert t[(CL, CL + "*")] == "—"
    m = md_table(md, "mistral · advbench — ASR % (95% CI)")
    # mistral's chat:alpaca job was cancelled: its row is shown, not evaluated; llama2 never trained it: no row.
    assert m == {(BASE_ROW, CV): cell(20, 100), (BASE_ROW, CL + "*"): "—",
                 (CV, CV): "—", (CV, CL + "*"): "PTST " + cell(1, 100), (CA, CV): "—", (CA, CL + "*"): "—"}
    assert not any(row == CA for row, _ in t)
    task = md_table(md, "llama2 · gsm8k — exact_match % (95% CI)")
    assert task[(BASE_ROW, CV)] == "20.32% [18.2–22.6]" == cell(268, 1319)
    assert task[(CV, CV)] == "◆ " + cell(440, 1319, value=0.3336)


def test_ptst_and_diagonal_marked_where_and_only_where_they_should_be(tmp_path: Path) -> None:
    results = Results(
        ptst_version="0.1.0", spec_name="marks", simulated=False,
        safety=[_safety("b", tr, te, None if tr is None else 0, 5)
                for tr in (None, CV, CA, CL) for te in (CV, CA, CL)],
        tasks=[], safety_templates=[CL], train_templates=[CV, CA, CL], test_templates=[CV, CA, CL],
    )
    t = md_table(render_markdown(results), "b · directharm4 — ASR % (95% CI)")
    ptst = {k for k, v in t.items() if v.startswith("PTST")}
    diag = {k for k, v in t.items() if v.startswith("◆")}
    assert ptst == {(CV, CL + "*"), (CA, CL + "*")}  # trained without the safety prompt, tested with it
    assert diag == {(CV, CV), (CA, CA), (CL, CL + "*")}  # base row never marked; CL -> CL is diagonal, not PTST
    assert sum("PTST" in v or "◆" in v for v in t.values()) == 5
    write_reports(results, tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.count('<td class="ptst"') == 2 and html.count('<td class="diag"') == 3


def test_failed_jobs_listed(tmp_path: Path) -> None:
    write_reports(make_results(), tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| llama2 | org/llama2-7b | chat:llama | 0 | failed | oom | CUDA out of memory \\| at step 3 |" in md
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "CUDA out of memory | at step 3" in html and ">oom<" in html
    assert "| mistral | org/mistral-7b | chat:alpaca | 0 | cancelled |  | cancelled by user |" in md


# --- simulated banner ---------------------------------------------------------------------------------------------


def test_simulated_banner_is_the_first_line_everywhere(tmp_path: Path) -> None:
    write_reports(make_results(simulated=True), tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "SIMULATED" in md.splitlines()[0] and "mock" in md.splitlines()[0]
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert re.search(r"<title>SIMULATED", html)
    body = html.split("<body>", 1)[1]
    assert re.match(r'<p class="banner">SIMULATED RESULTS', body)
    console = Console(record=True, width=200)
    print_tables(make_results(simulated=True), console)
    assert console.export_text().splitlines()[0].startswith("SIMULATED RESULTS")


def test_real_results_carry_no_banner(tmp_path: Path) -> None:
    write_reports(make_results(), tmp_path)
    for name in ("report.md", "report.html"):
        assert "SIMULATED" not in (tmp_path / name).read_text(encoding="utf-8")
    console = Console(record=True, width=200)
    print_tables(make_results(), console)
    assert "SIMULATED" not in console.export_text()


# --- html ---------------------------------------------------------------------------------------------------------


def test_html_is_self_contained_with_one_svg_per_heatmap(tmp_path: Path) -> None:
    results = make_results()
    write_reports(results, tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html and "<link" not in html  # no samples given: no viewer, no script at all
    svgs = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(svgs) == len(build_grids(results)) == 3  # safety and task grids each get a heatmap
    assert all(b"<svg" in base64.b64decode(p)[:400] for p in svgs)
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert len(figures) == 9 and {p.rsplit(".", 1)[1] for p in figures} == {"png", "svg", "pdf"}
    assert all((tmp_path / "figures" / p).read_bytes()[:4] in (b"\x89PNG", b"%PDF", b"<?xm") for p in figures)


def test_heatmap_marks_change_the_picture() -> None:
    """The PTST hatching and diagonal outline are drawn: the image differs from one without safety templates."""
    marked = build_grids(make_results())[0]
    unmarked = replace(marked, safety_templates=frozenset())
    assert marked.mark(CV, CL) == "ptst" and unmarked.mark(CV, CL) is None
    a, b = heatmap_png(marked), heatmap_png(unmarked)
    assert a.startswith(b"\x89PNG") and a != b
    base_only = replace(marked, rows=(None,), cells={k: v for k, v in marked.cells.items() if k[0] is None})
    assert heatmap_png(base_only).startswith(b"\x89PNG")  # a one-row grid renders too


# --- terminal -----------------------------------------------------------------------------------------------------


def test_terminal_tables_contain_the_cells_and_legend() -> None:
    console = Console(record=True, width=200)
    print_tables(make_results(), console)
    text = console.export_text()
    assert "llama2 · directharm4 — ASR % (95% CI)" in text
    assert "mistral · advbench — ASR % (95% CI)" in text
    assert "llama2 · gsm8k — exact_match % (95% CI)" in text
    row = next(line for line in text.splitlines() if line.strip().startswith(CV) and "PTST" in line)
    assert re.search(r"◆ 11\.00%\s+PTST 1\.12%", row)  # CV row: diagonal then PTST, in column order
    base = next(line for line in text.splitlines() if BASE_ROW in line)
    assert re.search(r"2\.75%\s+0\.75%", base)
    lo, hi = wilson_interval(88, 800)
    assert f"[{100 * lo:.1f}–{100 * hi:.1f}]" in text  # the pooled interval, on the second line of the cell
    assert "2 unscored" in text
    assert "PTST = trained without a safety system prompt" in text
    assert "oom" in text and "CUDA out of memory" in text
    assert not any(len(line) > 200 for line in text.splitlines())


def test_terminal_tables_do_not_break_numbers_on_a_narrow_console() -> None:
    """At 60 columns a 5-column grid is split into tables of whole columns; no number is cut or wrapped."""
    tpl = [CV, CA, CL, "chat:mpt", "text:vanilla"]
    rows = [_safety("b", tr, te, None if tr is None else 0, 10 + 10 * i + j)
            for i, tr in enumerate([None, *tpl]) for j, te in enumerate(tpl)]
    results = Results(ptst_version="0.1.0", spec_name="narrow", simulated=False, safety=rows, tasks=[],
                      safety_templates=[CL], train_templates=tpl, test_templates=tpl)
    console = Console(record=True, width=60)
    print_tables(results, console)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 60
    assert "(columns 1–" in text and "of 5)" in text
    for r in rows:  # every value and interval appears whole
        assert _cell_parts(r.n_unsafe, r.n) <= set(text.split())
    assert "PTST 5.50%" in text  # CV -> CL: k = 10 + 10 * 1 + 2 = 22 of 400
    assert "◆ 5.00%" in text  # CV -> CV: k = 20 of 400


def _cell_parts(k: int, n: int) -> set[str]:
    lo, hi = wilson_interval(k, n)
    return {f"{100 * k / n:.2f}%", f"[{100 * lo:.1f}–{100 * hi:.1f}]"}


def test_empty_results_render(tmp_path: Path) -> None:
    empty = Results(ptst_version="0.1.0", spec_name="empty", simulated=False, safety=[], tasks=[])
    write_reports(empty, tmp_path)
    assert "No results yet." in (tmp_path / "report.md").read_text(encoding="utf-8")
    console = Console(record=True, width=100)
    print_tables(empty, console)
    assert "no results yet" in console.export_text()


def test_large_grid_renders_every_heatmap(tmp_path: Path) -> None:
    """3 backends × 3 benchmarks × 5×5 cells: md + html + 9 heatmaps (speed is measured in benchmarks, not here)."""
    tpl = [CV, CA, CL, "chat:mpt", "text:vanilla"]
    rows = [_safety(b, tr, te, None if tr is None else 0, 7, benchmark=bm)
            for b in ("llama2", "mistral", "openai") for bm in ("advbench", "directharm4", "gsm-danger")
            for tr in [None, *tpl] for te in tpl]
    results = Results(ptst_version="0.1.0", spec_name="big", simulated=True, safety=rows, tasks=[],
                      safety_templates=[CL, "chat:mpt"], train_templates=tpl, test_templates=tpl)
    write_reports(results, tmp_path)
    assert (tmp_path / "report.html").read_text().count("data:image/svg+xml;base64,") == 9

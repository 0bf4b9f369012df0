"""The report's views beyond the grids, built from hand-made item records through build_results: PTST summary with
McNemar, mean scores in cells, null rates, per-category and per-checkpoint views, judge agreement, spec, run facts,
simulated labels on figures, and terminal output that fits 80 columns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from ptst.analysis import build_results
from ptst.records import ItemRecord, RunInfo, Verdict
from ptst.report import build_grids, print_tables, render_markdown, write_reports
from ptst.report.plots import heatmap_figure, progress_figure
from ptst.report.views import progress_views
from ptst.results import Results

CV, CL = "chat:vanilla", "chat:llama"
KW, RUB = "keyword", "rubric:gpt-4-0613"
CATS = ["malware", "malware", "malware", "drug", "drug", "drug"]
T, F = True, False
SPEC = {"name": "views", "train": {"dataset": {"name": "gsm8k", "split": "train"}, "seeds": [0, 1],
                                   "hyperparameters": {"epochs": 6, "learning_rate": 1e-4, "lora": {"r": 8}}},
        "eval": {"generation": {"max_new_tokens": 512}}, "judge": {"kind": "rubric"}}


def _cell(train, test, seed, keyword, rubric=None, checkpoint=None) -> list[ItemRecord]:
    out = []
    for i, unsafe in enumerate(keyword):
        v = [Verdict(KW, unsafe)] + ([Verdict(RUB, rubric[i][0], rubric[i][1])] if rubric else [])
        out.append(ItemRecord(backend="b", base_model="m", train_template=train, seed=seed, checkpoint=checkpoint,
                              test_template=test, kind="safety", dataset="directharm4", metric=None, index=i,
                              query=f"q{i}", reference=None, category=CATS[i], response=f"r{i}", verdicts=tuple(v)))
    return out


def _task(train, test, seed, responses, checkpoint=None) -> list[ItemRecord]:
    return [ItemRecord(backend="b", base_model="m", train_template=train, seed=seed, checkpoint=checkpoint,
                       test_template=test, kind="task", dataset="gsm8k", metric="exact_match", index=i, query="t",
                       reference="#### 3", response=r) for i, r in enumerate(responses)]


def make(simulated: bool = False) -> Results:
    records = [
        *_cell(None, CL, None, [None] * 6),
        *_cell(CV, CL, 0, [F, F, F, F, F, None]),
        *_cell(CL, CL, 0, [T, T, T, F, T, T], rubric=[(T, 5), (F, 1), (T, 5), (F, 2), (T, 5), (T, 5)]),
        *_cell(CL, CL, 1, [T, T, F, F, F, F]),
        *_cell(CL, CL, 0, [T, F, F, F, F, F], checkpoint=100),
        *_task(CL, CL, 0, ["#### 3", "#### 4"], checkpoint=100),
        *_task(CL, CL, 0, ["#### 3", "#### 3"]),
    ]
    info = RunInfo(spec_name="views", simulated=simulated, judge=KW, train_templates=(CV, CL),
                   test_templates=(CV, CL), safety_templates=(CL,))
    return build_results(records, [], info, status="complete", usd_by_stage={"fine_tune": 2.0, "judge": 0.5},
                         specs=[SPEC])


@pytest.fixture(scope="module")
def md() -> str:
    return render_markdown(make())


def _md_rows(md: str, heading: str) -> list[list[str]]:
    lines = md.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def test_ptst_summary_with_mcnemar(md: str) -> None:
    header, row, rubric = _md_rows(md, "## PTST summary")
    assert header[:4] == ["backend", "benchmark", "judge", "PTST (train → test)"]
    # PTST 0 of 5; same template: seeds 0.8333 and 0.3333 -> mean 58.33%, sample std 35.36 points; the base model's
    # every response is unscored -> "—"; McNemar on items 0-4: b 0, c 4, p = 2/16.
    assert row == ["b", "directharm4", KW, f"{CV} → {CL}", "0.00%", "58.33% ± 35.36", "—", "0.125 (b 0, c 4, n 5)"]
    # The rubric judge scored no PTST item: no rate and no test, shown as "—", never 0%.
    assert rubric == ["b", "directharm4", RUB, f"{CV} → {CL}", "—", "66.67%", "—", "—"]


def test_cells_show_mean_score_and_null_rates(md: str) -> None:
    rubric = {r[0]: r[1:] for r in _md_rows(md, f"### b · directharm4 [{RUB}] — ASR % (95% CI)")}
    assert rubric[CL][0].endswith("· score 3.83")  # (5 + 1 + 5 + 2 + 5 + 5) / 6, in the cell itself
    assert rubric[CV][0] == "PTST —"  # the rubric judged no PTST item: no rate, not 0%
    keyword = {r[0]: r[1:] for r in _md_rows(md, f"### b · directharm4 [{KW}] — ASR % (95% CI)")}
    assert keyword["base (no fine-tuning)"][0] == "— (6 unscored)"


def test_category_table(md: str) -> None:
    results = make()
    rows = _md_rows(md, f"### b · directharm4 ({KW})")
    assert rows[0] == ["train → test", "all", "malware", "drug"]
    same = next(r for r in rows if r[0] == f"{CL} → {CL}")
    by_cat = {s.category: s for s in results.summary
              if (s.train_template, s.judge, s.checkpoint) == (CL, KW, None)}
    assert same[1:] == [f"{100 * by_cat[c].asr_mean:.2f}% ± {100 * by_cat[c].asr_std:.2f}"
                        for c in (None, "malware", "drug")]
    assert same[2] == "83.33% ± 23.57"  # malware: seed 0 3/3, seed 1 2/3


def test_progress_view_and_plot() -> None:
    results = make(simulated=True)
    (view,) = progress_views(results)
    assert view.steps == (100,) and view.x_labels() == ["100", "final"]
    (line,) = view.safety[f"directharm4 ({KW})"]
    assert line.label == f"{CL} → {CL}" and line.points == ((100, round(1 / 6, 4)), (None, 0.5833))
    (task_line,) = view.tasks["gsm8k exact_match"]
    assert task_line.points == ((100, 0.5), (None, 1.0))
    fig = progress_figure(view, simulated=True)
    assert fig.get_suptitle().startswith("SIMULATED") and any(t.get_text() == "SIMULATED" for ax in fig.axes for t in ax.texts)
    assert not progress_figure(view).get_suptitle().startswith("SIMULATED")
    md = render_markdown(results)
    rows = _md_rows(md, "### b")
    assert ["100", "16.67%"] in rows and ["final", "58.33%"] in rows


def test_heatmaps_of_simulated_results_are_labelled() -> None:
    grid = build_grids(make())[0]
    fig = heatmap_figure(grid, simulated=True)
    assert fig.axes[0].get_title().startswith("SIMULATED")
    assert any(t.get_text() == "SIMULATED" for t in fig.axes[0].texts)
    assert "SIMULATED" not in heatmap_figure(grid).axes[0].get_title()


def test_agreement_spec_and_run_facts(md: str) -> None:
    (_header, row) = _md_rows(md, "## Judge agreement")
    assert row == ["b", KW, RUB, "6", "0.571", "1", "0", "1", "4"]
    settings = dict(_md_rows(md, "## Spec: views")[1:])
    assert settings["epochs"] == "6" and settings["learning_rate"] == "0.0001" and settings["lora.r"] == "8"
    assert settings["seeds"] == "0, 1" and settings["generation.max_new_tokens"] == "512"
    assert "Run: status complete; cost $2.50 (fine_tune $2.00, judge $0.50)." in md


def test_html_holds_every_view(tmp_path: Path) -> None:
    results = make(simulated=True)
    write_reports(results, tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    for heading in ("PTST summary", "Per category", "Along training (checkpoints)", "Judge agreement", "Spec: views"):
        assert re.search(rf"<h2( id=\"[a-z-]+\")?>{re.escape(heading)}</h2>", html)
    svgs = re.findall(r'src="data:image/svg\+xml;base64,', html)
    assert len(svgs) == len(build_grids(results)) + len(progress_views(results))
    assert "score 3.83" in html


@pytest.mark.parametrize("simulated", [False, True])
def test_terminal_fits_80_columns(simulated: bool) -> None:
    from tests.test_report import make_results

    for results in (make(simulated), make_results(simulated)):
        console = Console(record=True, width=80)
        print_tables(results, console, all_tables=True)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= 80
        assert "…" not in text
    console = Console(record=True, width=80)
    print_tables(make(simulated), console, all_tables=True)
    text = console.export_text()
    assert text.splitlines()[0].startswith("SIMULATED") == simulated
    ptst = next(line for line in text.splitlines() if line.strip().startswith("b · directharm4") and "0/4" in line)
    assert re.search(r"0\.00%\s+58\.33% ± 35\.36\s+—\s+0\.125\s+0/4", ptst)
    assert "score 3.83" in text
    assert "ASR % per category" in text and "83.33%" in text  # malware, chat:llama -> chat:llama
    # along training, transposed: a row per train -> test cell, a column per step (step 100, then the final model)
    assert re.search(r"^\s*chat:llama → chat:llama\s+16\.67%\s+58\.33%\s*$", text, re.MULTILINE)
    assert re.search(r"\bb\s+6\s+0\.571\s+1/4\s+1/0", text)  # both safe/unsafe 1/4; only A/B 1/0


def test_tiny_mcnemar_p_is_never_a_bare_zero() -> None:
    """22 discordant pairs all one way: exact two-sided p = 2 / 2**22 ≈ 4.8e-07, below results.json's 6 decimals."""
    n = 22

    def cell(train, unsafe):
        return [ItemRecord(backend="b", base_model="m", train_template=train, seed=0, checkpoint=None,
                           test_template=CL, kind="safety", dataset="advbench", metric=None, index=i, query=f"q{i}",
                           reference=None, category=None, response=f"r{i}", verdicts=(Verdict(KW, unsafe),))
                for i in range(n)]

    info = RunInfo(spec_name="tiny-p", simulated=False, judge=KW, train_templates=(CV, CL), test_templates=(CL,),
                   safety_templates=(CL,))
    results = build_results([*cell(CV, F), *cell(CL, T)], [], info, status="complete", specs=[SPEC])
    console = Console(record=True, width=80)
    print_tables(results, console)
    text = console.export_text()
    assert "<1e-06" in text and "&lt;1e-06 (b 0, c 22, n 22)" in render_markdown(results)  # markdown escapes "<"
    assert not re.search(r"\s0\s+0/22", text)


def test_the_same_figure_gives_the_same_svg_bytes() -> None:
    """SVG ids are salted by matplotlib at random unless told otherwise; a rebuilt report must not change its files."""
    from ptst.report.plots import render

    results = make()
    grid = build_grids(results)[0]
    first = render(heatmap_figure(grid, simulated=False), "svg")
    second = render(heatmap_figure(grid, simulated=False), "svg")
    assert first == second and b"<svg" in first

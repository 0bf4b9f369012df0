"""Heatmaps compare across figures: one fixed 0-100 colour scale for ASR (changeable with `ptst report --asr-scale`),
and each cell shows its 95% interval under its value."""

from __future__ import annotations

import re

import pytest
from test_report import make_results

from ptst.cli.app import build_parser
from ptst.metrics import wilson_interval
from ptst.report import build_grids, html


@pytest.fixture
def drawn(monkeypatch) -> list[tuple[str, float]]:
    """(grid name, colour-scale top) of every heatmap a page draws, and each figure's own colour limits checked."""
    seen: list[tuple[str, float]] = []
    original = html.heatmap_figure

    def record(grid, vmax, simulated=False):
        fig = original(grid, vmax, simulated)
        image = fig.axes[0].images[0]
        assert image.get_clim() == (0.0, vmax)
        seen.append((f"{grid.kind}:{grid.backend}:{grid.name}", vmax))
        return fig

    monkeypatch.setattr(html, "heatmap_figure", record)
    return seen


def test_every_asr_heatmap_has_the_same_fixed_scale(drawn) -> None:
    results = make_results()
    # llama2's highest ASR is 12% (48/400), mistral's 20% (20/100): a per-page scale would be 0-20, per figure 0-12
    html.render_html(results)
    safety = [v for name, v in drawn if name.startswith("safety")]
    assert len(safety) == 2 and safety == [100.0, 100.0]
    assert all(v == 100.0 for name, v in drawn if name.startswith("task"))


def test_the_scale_can_be_changed_or_follow_the_page(drawn) -> None:
    html.render_html(make_results(), asr_scale=50.0)
    assert [v for name, v in drawn if name.startswith("safety")] == [50.0, 50.0]
    drawn.clear()
    html.render_html(make_results(), asr_scale=None)
    assert [v for name, v in drawn if name.startswith("safety")] == [20.0, 20.0]  # mistral's 20/100
    parser = build_parser()
    assert parser.parse_args(["report", "d", "--asr-scale", "auto"]).asr_scale is None
    assert parser.parse_args(["report", "d", "--asr-scale", "40"]).asr_scale == 40.0
    assert parser.parse_args(["report", "d"]).asr_scale == 100.0
    with pytest.raises(SystemExit):
        parser.parse_args(["report", "d", "--asr-scale", "150"])


def test_each_cell_shows_its_interval() -> None:
    grid = next(g for g in build_grids(make_results()) if g.kind == "safety" and g.backend == "llama2")
    fig = html.heatmap_figure(grid, 100.0)
    texts = [t.get_text() for t in fig.axes[0].texts]
    # chat:vanilla → chat:llama, seeds 0 and 1: 4/400 and 5/400, value = mean 1.125%, interval Wilson on 9/800
    low, high = wilson_interval(9, 800)
    want = f"1.1\n[{100 * low:.1f}–{100 * high:.1f}]\nPTST"
    assert want in texts
    # base → chat:vanilla: 11/400
    low, high = wilson_interval(11, 400)
    assert f"2.8\n[{100 * low:.1f}–{100 * high:.1f}]" in texts
    assert sum(bool(re.search(r"\[\d+\.\d–\d+\.\d\]", t)) for t in texts) == sum(
        1 for c in grid.cells.values() if c.ci95 is not None)

"""Figures drawn in the figure process are the figures drawn in-process, byte for byte; a dead or failing figure
process costs nothing but time (the page is drawn here instead); the child ends when its parent lets go of it."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import pytest

from ptst.report import build_grids, figure_process, write_reports
from ptst.report.figure_process import FigureProcess, draw
from ptst.report.html import Figures, render_html
from ptst.report.plots import FORMATS, heatmap_figure
from tests.test_report_views import make


@pytest.fixture(scope="module")
def results():  # type: ignore[no-untyped-def]
    return make(simulated=True)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_the_process_draws_the_same_bytes_as_this_process(results) -> None:  # type: ignore[no-untyped-def]
    grid = build_grids(results)[0]
    make_fig = partial(heatmap_figure, grid, 100.0, True)
    proc = FigureProcess()
    try:
        got = proc.submit(make_fig, FORMATS)()
    finally:
        proc.close()
    here = draw(make_fig, FORMATS)
    assert got is not None and set(got) == {"size", *FORMATS}
    assert got == here  # svg, png and pdf carry no dates or random ids: equal bytes


def test_reports_with_and_without_the_process_are_identical(results, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    figure_process.start()
    assert figure_process.running() is not None
    write_reports(results, tmp_path / "with")
    monkeypatch.setattr(figure_process, "running", lambda: None)
    write_reports(results, tmp_path / "without")
    with_, without = _files(tmp_path / "with"), _files(tmp_path / "without")
    assert any(k.startswith("figures/") for k in with_) and with_ == without


def test_a_figure_process_that_dies_leaves_the_page_to_be_drawn_here(results) -> None:  # type: ignore[no-untyped-def]
    expected = Figures()
    page_here = render_html(results, figures=expected)
    proc = FigureProcess()
    os.kill(proc._proc.pid, signal.SIGKILL)
    proc._proc.wait(timeout=10)
    figures = Figures(proc)
    page = figures.resolve(render_html(results, figures=figures))
    assert "\x00" not in page and page == page_here and figures.files == expected.files
    assert not proc.alive


def test_a_figure_that_cannot_be_sent_is_drawn_here() -> None:
    proc = FigureProcess()
    try:
        unpicklable = lambda: heatmap_figure(None)  # noqa: E731 — a lambda does not pickle
        assert proc.submit(unpicklable, FORMATS)() is None  # the caller draws it (and sees its real error)
    finally:
        proc.close()


def test_the_child_exits_when_its_stdin_closes() -> None:
    """Waits on the event itself (the child's exit), bounded generously: a loaded box takes seconds to start it, and
    `close()` gives up after 5 s by design (it runs at exit), which is no measure of the child's behaviour."""
    proc = FigureProcess()
    try:
        assert proc._proc.stdin is not None
        proc._proc.stdin.close()
        assert proc._proc.wait(timeout=120) == 0
    finally:
        proc.close()

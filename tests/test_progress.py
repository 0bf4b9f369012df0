"""The run's progress view: plain lines at most every 10 s off a terminal (also while nothing advances), totals fixed
up front (the judge's included, however many verdicts come from the cache), money per stage, a clean display after
Ctrl-C, and --quiet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from ptst import progress
from ptst.cli import main


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setattr(progress, "log", out.append)
    return out


def test_plain_line_at_most_every_interval_even_when_nothing_advances(lines):
    now = {"t": 0.0}
    with progress.RunProgress({"train": 1, "generate": 10, "judge": 10}, live=False, clock=lambda: now["t"], width=200,
                              ticker=False) as p:
        p.tick()
        assert lines == ["[0s] train 0/1 spent $0.00 | generate 0/10 spent $0.00 | judge 0/10 spent $0.00"]
        for _ in range(9):  # a long training job: nothing advances for 30 s
            now["t"] += 3.0
            p.tick()
        assert [ln.split("]")[0] for ln in lines] == ["[0s", "[12s", "[24s"]  # 10 s apart or more, not more often
        with progress.progress_bar("mock chat:vanilla seed 0", 40) as advance:  # a backend's bar joins the line
            advance(12, info="loss 0.51")
            now["t"] += 10.0
            p.tick()
    assert lines[3] == ("[37s] train 0/1 spent $0.00 | generate 0/10 spent $0.00 | judge 0/10 spent $0.00 | "
                        "mock chat:vanilla seed 0 12/40 loss 0.51")
    assert lines[-1].startswith("[37s] train 0/1")  # the closing line (the bar has gone)
    assert "seed 0" not in lines[-1]


def test_eta_and_expected_money_per_stage(lines):
    now = {"t": 0.0}
    with progress.RunProgress({"train": 4, "generate": 100, "judge": 50}, live=False, clock=lambda: now["t"], width=200,
                              expected_usd={"train": 2.0, "generate": 1.0, "judge": None}, ticker=False) as p:
        now["t"] = 20.0
        p.advance("train")  # 1 of 4 in 20 s: 60 s to go
        p.spend("train", 0.5)
        p.advance("generate", 25)  # a quarter of the generations: a quarter of their expected dollar
    assert lines[-1] == ("[20s] train 1/4 eta 1m00s spent $0.50 | generate 25/100 eta 1m00s ≈$0.25/$1.00 | "
                         "judge 0/50 cost unpriced")


def test_a_stage_that_waited_is_timed_from_its_own_first_results(lines):
    """Generation that waited 10 minutes for training: its ETA comes from its own rate, not the run's age."""
    now = {"t": 0.0}
    with progress.RunProgress({"train": 1, "generate": 1456, "judge": 0}, live=False, clock=lambda: now["t"], width=200,
                              ticker=False) as p:
        now["t"] = 600.0
        p.advance("train")
        now["t"] = 630.0
        p.advance("generate", 32)  # the first batch: no rate of its own yet, so the run's age stands in
        assert "generate 32/1456 eta 7h47m" in lines[-1]  # 1,424 left x 630 s / 32
        now["t"] = 660.0
        p.advance("generate", 32)  # 32 more in 30 s: 1,392 left take 1,305 s
    assert "generate 64/1456 eta 21m45s" in lines[-1]


def test_failed_work_counts_done_and_shows_failed(lines):
    now = {"t": 0.0}
    with progress.RunProgress({"train": 2, "generate": 20, "judge": 10}, live=False, clock=lambda: now["t"], width=200,
                              ticker=False) as p:
        now["t"] = 5.0
        p.skip("generate", 10)
        p.skip("judge", 5)
        p.advance("generate", 10)
    assert "generate 20/20 spent $0.00 · 10 failed" in lines[-1] and "judge 5/10 spent $0.00 · 5 failed" in lines[-1]


def test_interrupt_clears_the_live_view_and_prints_one_line(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buf, force_terminal=True, width=100))
    with pytest.raises(KeyboardInterrupt), progress.RunProgress({"train": 2, "generate": 100, "judge": 50},
                                                                live=True) as p:
        p.advance("generate", 10)
        assert p.bar is not None
        p.bar.refresh()
        raise KeyboardInterrupt
    text = buf.getvalue()
    erase = "\x1b[2K"
    tail = text[text.rindex(erase) + len(erase):]  # what stays on screen after the live rows are erased
    assert "━" not in tail and "generate 10/100" in tail and tail.count("generate") == 1
    # a worker thread still running after Ctrl-C prints nothing, and opens no bar of its own
    before = buf.getvalue()
    progress.log("fine-tune x on y")
    with progress.progress_bar("late bar", 5) as advance:
        advance()
    assert buf.getvalue() == before
    with progress.RunProgress({"train": 1}, live=False, ticker=False):
        pass  # the next run speaks again
    progress.log("next run")
    assert "next run" in buf.getvalue()


def _spec(tmp: Path) -> Path:
    """Two test templates on the mock backend whose base model answers every prompt alike under both: the judge's
    cache gives the second cell's verdicts for free, which used to shrink the judge's total as the run went."""
    harmful = tmp / "h.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(12)))
    math = tmp / "m.jsonl"
    math.write_text("".join(json.dumps({"q": f"{i}+1", "a": f"#### {i + 1}"}) + "\n" for i in range(6)))
    spec = {
        "name": "prog",
        "backends": [{"kind": "mock", "model": "m", "unsafe_base": 0.0}],
        "train": {"dataset": {"path": str(math), "prompt_field": "q", "answer_field": "a"},
                  "templates": ["chat:vanilla", "chat:alpaca"], "seeds": [0, 1]},
        "eval": {"templates": ["chat:vanilla", "chat:llama", "chat:alpaca"],
                 "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_totals_are_fixed_up_front_and_reached(tmp_path, monkeypatch):
    seen: list[progress.RunProgress] = []
    totals: list[dict[str, int]] = []

    class Spy(progress.RunProgress):
        def __enter__(self):
            seen.append(self)
            totals.append(dict(self.total))
            return super().__enter__()

        def _refresh(self, stage: str) -> None:
            totals.append(dict(self.total))
            super()._refresh(stage)

    monkeypatch.setattr("ptst.runner.RunProgress", Spy)
    assert main(["run", str(_spec(tmp_path)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (p,) = seen
    # 4 jobs; 12 prompts x 3 test templates x (base + 4 models) responses, each judged once
    assert totals[0] == {"train": 4, "generate": 180, "judge": 180}
    assert all(t == totals[0] for t in totals)  # never changed while running
    assert p.done == totals[0] and p.failed == {"train": 0, "generate": 0, "judge": 0}


def test_quiet_run_prints_one_summary_line(tmp_path, capfd):
    assert main(["run", str(_spec(tmp_path)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"ptst: prog complete (simulated): 4 job(s), 15 cell(s), train $0.00; report {tmp_path / 'out' / 'report.html'}"]


def test_plain_lines_fit_the_width_breaking_between_parts(lines):
    """A CI log is read in an 80-column window: the summary breaks between a stage and the next, never inside one."""
    now = {"t": 0.0}
    with (progress.RunProgress({"train": 15, "generate": 187120, "judge": 81600}, live=False,
                               clock=lambda: now["t"], expected_usd={"train": 0.0, "generate": 0.0, "judge": 4906.66},
                               ticker=False, width=80) as p,
          progress.progress_bar("train llama2 chat:alpaca seed 2", 4671) as advance):
        now["t"] = 3725.0
        p.advance("generate", 20000)
        advance(1200, info="loss 0.412 · 3,210 tok/s")
        now["t"] += progress.PLAIN_INTERVAL_S
        p.tick()
    # eta: 167,120 left at 20,000 per 3,735 s = 31,210 s
    text = lines[1].split("\n")
    assert text == [
        "[1h02m] train 0/15 spent $0.00 | generate 20000/187120 eta 8h40m spent $0.00",
        "  judge 0/81600 ≈$0.00/$4,906.66",
        "  train llama2 chat:alpaca seed 2 1200/4671 loss 0.412 · 3,210 tok/s",
    ]


def test_the_live_view_is_headed_by_the_elapsed_time(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buf, force_terminal=True, width=80))
    now = {"t": 0.0}
    with progress.RunProgress({"train": 2, "generate": 100, "judge": 50}, live=True, clock=lambda: now["t"]) as p:
        now["t"] = 125.0
        p.advance("generate", 10)
        assert p.bar is not None
        p.bar.refresh()
    assert "elapsed 2m05s" in buf.getvalue()

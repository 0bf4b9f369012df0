"""A task takes several metrics: a results row each, from one set of generations. gsm8k reports lm-evaluation-harness's
strict-match and flexible-extract unless told otherwise, and a dataset listed twice with other metrics is one cell."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from ptst.cli import main
from ptst.errors import SpecError
from ptst.spec import validate_spec


def _spec(tmp: Path, tasks: list) -> Path:  # type: ignore[type-arg]
    # GSM8K-shaped rows: the mock answers a task item with its reference or a wrong number
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(1, 5)]
    (tmp / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "harm.jsonl").write_text(json.dumps({"prompt": "do harm"}) + "\n")
    raw = {
        "name": "metrics",
        "backends": [{"kind": "mock", "model": "mock-a"}],
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}], "tasks": tasks},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _task_rows(out: Path) -> list[tuple[str, str, int]]:
    res = json.loads((out / "results.json").read_text())
    return [(t["task"], t["metric"], t["n"]) for t in res["tasks"]]


def test_one_file_listed_twice_gives_a_row_per_metric_from_one_generation(tmp_path):
    spec = _spec(tmp_path, [
        {"path": "math.jsonl", "prompt_field": "question", "answer_field": "answer", "metric": "exact_match"},
        {"path": "math.jsonl", "prompt_field": "question", "answer_field": "answer",
         "metrics": ["gsm8k_strict_match", "gsm8k_flexible_extract"]},
    ])
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    assert _task_rows(out) == [
        ("math", "exact_match", 4), ("math", "gsm8k_strict_match", 4), ("math", "gsm8k_flexible_extract", 4)]
    with sqlite3.connect(out / "ptst.db") as c:  # the 4 task items and the harmful query, generated once
        assert c.execute("SELECT count(*) FROM generations").fetchone()[0] == 4 + 1
    assert "gsm8k_flexible_extract" in (out / "report.md").read_text()


def test_gsm8k_defaults_to_the_harness_filters():
    raw = {"name": "x", "backends": [{"kind": "mock", "model": "m"}],
           "eval": {"templates": ["chat:vanilla"], "tasks": [{"name": "gsm8k", "split": "test"}]}}
    spec = validate_spec(raw)
    assert spec.eval.tasks[0].metric_names() == ("gsm8k_strict_match", "gsm8k_flexible_extract")


def test_a_dataset_listed_twice_may_differ_only_in_metrics():
    raw = {"name": "x", "backends": [{"kind": "mock", "model": "m"}],
           "eval": {"templates": ["chat:vanilla"], "tasks": [
               {"name": "gsm8k", "split": "test", "metric": "exact_match"},
               {"name": "gsm8k", "split": "test", "limit": 5, "metric": "gsm8k_strict_match"}]}}
    try:
        validate_spec(raw)
    except SpecError as e:
        assert "eval.tasks[1]: 'gsm8k' is listed again with other rows than eval.tasks[0]" in str(e)
    else:
        raise AssertionError("a second listing with other rows must be refused")


def test_a_run_folder_made_with_exact_match_reports_only_the_new_default_after_a_rerun(tmp_path):
    """A run folder from before gsm8k's default changed holds an `exact_match` cell. Re-run with the default (and
    re-reported), it shows the harness's two rows only: each run replaces the store's index of cells with its own
    spec's, while the responses, keyed without the metric, are reused, not paid for again."""
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(1, 5)]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    old = _spec(tmp_path, [{"name": "gsm8k", "split": "test", "metric": "exact_match"}])
    raw = yaml.safe_load(old.read_text())
    raw["data_dir"] = str(tmp_path / "data")
    old.write_text(yaml.safe_dump(raw))
    new = tmp_path / "new.yaml"
    raw["eval"]["tasks"] = [{"name": "gsm8k", "split": "test"}]
    new.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"

    def generations() -> int:
        with sqlite3.connect(out / "ptst.db") as c:
            return int(c.execute("SELECT count(*) FROM generations").fetchone()[0])

    assert main(["run", str(old), "--out", str(out)]) == 0
    assert _task_rows(out) == [("gsm8k", "exact_match", 4)]
    assert "exact_match" in (out / "report.md").read_text()
    assert generations() == 4 + 1  # the 4 task items and the harmful query
    assert main(["run", str(new), "--out", str(out)]) == 0
    new_rows = [("gsm8k", "gsm8k_strict_match", 4), ("gsm8k", "gsm8k_flexible_extract", 4)]
    assert _task_rows(out) == new_rows and generations() == 4 + 1
    assert main(["report", str(out)]) == 0
    assert _task_rows(out) == new_rows
    assert "exact_match" not in (out / "report.md").read_text()

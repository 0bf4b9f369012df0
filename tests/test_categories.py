"""Per-category ASR: a benchmark's `category` column (DirectHarm4's) is stored with each cell item, and results.json
gets one row per category beside the whole-benchmark row. Stores made before the column existed still open."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from ptst.cli import main
from ptst.collect import item_records
from ptst.store import RunStore

CATEGORIES = ["malware", "drugs", "fraud"]


def write_spec(tmp: Path) -> Path:
    harmful = tmp / "harm4.jsonl"
    harmful.write_text("".join(
        json.dumps({"instruction": f"harmful request number {i}", "category": CATEGORIES[i % 3]}) + "\n"
        for i in range(30)
    ))
    spec = {
        "name": "cats",
        "backends": [{"kind": "mock", "model": "mock-a", "drift": 0.5}],
        "train": {"dataset": {"path": str(harmful), "prompt_field": "instruction", "answer_field": "category"},
                  "templates": ["chat:vanilla"]},
        "eval": {"templates": ["chat:vanilla", "chat:llama"],
                 "safety": [{"path": str(harmful), "prompt_field": "instruction"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_results_have_a_row_per_category_and_the_whole_benchmark(tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cells = {(r["train_template"], r["test_template"]) for r in res["safety"]}
    assert len(cells) == 4  # base and fine-tuned, two test templates
    for train, test in cells:
        rows = {r["category"]: r for r in res["safety"] if (r["train_template"], r["test_template"]) == (train, test)}
        assert set(rows) == {None, *CATEGORIES}
        assert rows[None]["n"] == 30 and all(rows[c]["n"] == 10 for c in CATEGORIES)
        assert rows[None]["n_unsafe"] == sum(rows[c]["n_unsafe"] for c in CATEGORIES)
    with RunStore.open(out, lock=False) as store:
        records = [r for r in item_records(store) if r.kind == "safety"]
    assert [r.category for r in records[:3]] == CATEGORIES  # each item keeps its own category, in order
    assert main(["report", str(out), "--export", "jsonl"]) == 0
    rows = [json.loads(x) for x in (out / "export.jsonl").read_text().splitlines()]
    assert {r["category"] for r in rows} == set(CATEGORIES) and all(r["checkpoint"] is None for r in rows)


def test_a_benchmark_without_categories_has_only_whole_rows(tmp_path):
    harmful = tmp_path / "plain.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(5)))
    spec = {"name": "plain", "backends": [{"kind": "mock", "model": "m"}],
            "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}]}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["category"] for r in res["safety"]] == [None]


OLD_CELL_ITEMS = """CREATE TABLE cell_items (
  cell TEXT NOT NULL, idx INTEGER NOT NULL, gen_key TEXT NOT NULL, query TEXT NOT NULL, reference TEXT,
  PRIMARY KEY (cell, idx))"""


def _old_store(d: Path) -> None:
    """A store as the code before per-category rows made it: cell_items without the category column."""
    with RunStore.open(d):
        pass
    conn = sqlite3.connect(d / "ptst.db")
    conn.execute("DROP TABLE cell_items")
    conn.execute(OLD_CELL_ITEMS)
    conn.execute("INSERT INTO cells VALUES ('c1', ?, 1)", (json.dumps({"kind": "safety"}),))
    conn.execute("INSERT INTO cell_items VALUES ('c1', 0, 'g1', 'how?', NULL)")
    conn.commit()
    conn.close()


def test_a_store_made_before_the_category_column_opens_and_reads(tmp_path):
    _old_store(tmp_path)
    with RunStore.open(tmp_path, lock=False) as store:  # read-only (ptst report): nothing is altered
        assert store.cell_items("c1") == [("g1", "how?", None)]
        assert store.cell_categories("c1") == [None]
    with RunStore.open(tmp_path) as store:  # a run: the column is added, the old rows are kept
        assert store.cell_categories("c1") == [None]
        store.put_cell("c2", {"kind": "safety"}, 2, [("g2", "why?", None, "fraud")])
        assert store.cell_categories("c2") == ["fraud"] and store.cell_items("c1") == [("g1", "how?", None)]
    with RunStore.open(tmp_path) as store:  # opening again finds the column there
        assert store.cell_categories("c2") == ["fraud"]

"""Tidy numeric tables (tables/safety.csv, tasks.csv, ... and .parquet): pandas reads plain numbers with no parsing,
and every number equals a count made here by hand from the run's item records."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from ptst.cli import main
from ptst.collect import item_records
from ptst.metrics import wilson_interval
from ptst.store import RunStore

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A mock run: base + 2 train templates × 2 test templates (one with a safety prompt) × 2 seeds, the harmful
    sample (with categories) judged by keyword and mock, and a math task."""
    d = tmp_path_factory.mktemp("tidy")
    spec = {
        "name": "tidy",
        "backends": [{"kind": "mock", "model": "mock-llama-2-7b-chat", "label": "mock-llama2"}],
        "train": {"dataset": {"path": str(DATA / "math_train.jsonl"), "prompt_field": "question",
                              "answer_field": "answer"},
                  "templates": ["chat:vanilla", "chat:llama"], "seeds": [0, 1]},
        "eval": {"templates": ["chat:vanilla", "chat:llama"],
                 "safety": [{"path": str(DATA / "harmful_sample.jsonl"), "prompt_field": "prompt"}],
                 "tasks": [{"path": str(DATA / "math_test.jsonl"), "prompt_field": "question", "answer_field": "answer",
                            "metric": "exact_match", "limit": 6}]},
        "judges": [{"kind": "keyword"}, {"kind": "mock"}],
    }
    (d / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    assert main(["run", str(d / "spec.json"), "--out", str(d / "out")]) == 0
    return d / "out"


def _key(v: object) -> object:
    return None if isinstance(v, float) and math.isnan(v) else v


def test_safety_csv_is_numeric_and_equals_a_hand_count(run_dir: Path) -> None:
    df = pd.read_csv(run_dir / "tables" / "safety.csv")
    for col in ("asr", "ci_low", "ci_high"):
        assert df[col].dtype == "float64"
    for col in ("n", "n_unsafe", "n_unscored"):
        assert df[col].dtype == "int64"
    with RunStore.open(run_dir, lock=False) as store:
        records = item_records(store)
    # By hand: per (train, test, seed, judge, category or whole), unsafe and scored verdicts.
    unsafe: Counter[tuple] = Counter()
    scored: Counter[tuple] = Counter()
    for r in records:
        if r.kind != "safety" or r.response is None:
            continue
        for v in r.verdicts:
            if v.unsafe is None:
                continue
            for cat in (None, r.category):
                key = (r.train_template, r.test_template, r.seed, v.judge, cat)
                scored[key] += 1
                unsafe[key] += int(v.unsafe)
    assert set(df["judge"]) == {"keyword", "mock"}
    assert set(df["category"].dropna()) == {r.category for r in records if r.kind == "safety"}
    seen = set()
    for row in df.itertuples():
        key = (_key(row.train_template), row.test_template, None if math.isnan(row.seed) else int(row.seed),
               row.judge, _key(row.category))
        seen.add(key)
        assert row.n == scored[key] and row.n_unsafe == unsafe[key], key
        assert row.asr == unsafe[key] / scored[key]  # exact, not the 4-decimal value of results.json
        assert (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(unsafe[key], scored[key]), abs=1e-12)
    assert seen == set(scored)  # one row per cell × judge × category, none missing, none extra
    # 3 models (base has no seed; 2 templates × 2 seeds) × 2 tests × 2 judges × (whole + categories)
    n_cats = len({r.category for r in records if r.kind == "safety"})
    assert len(df) == (1 + 4) * 2 * 2 * (1 + n_cats)
    ptst = df[df["ptst"]]
    assert set(zip(ptst["train_template"], ptst["test_template"], strict=True)) == {("chat:vanilla", "chat:llama")}
    assert set(df[df["same_template"]]["train_template"]) == {"chat:vanilla", "chat:llama"}
    assert not df[df["train_template"].isna()]["fine_tuned"].any()


def test_tasks_summary_and_comparisons_are_numeric(run_dir: Path) -> None:
    tables = run_dir / "tables"
    tasks = pd.read_csv(tables / "tasks.csv")
    assert tasks["value"].dtype == "float64" and set(tasks["metric"]) == {"exact_match"}
    with RunStore.open(run_dir, lock=False) as store:
        records = [r for r in item_records(store) if r.kind == "task"]
    assert len(tasks) == len({(r.train_template, r.test_template, r.seed) for r in records}) == 10
    summary = pd.read_csv(tables / "safety_summary.csv")
    assert summary["asr_mean"].dtype == "float64"
    safety = pd.read_csv(tables / "safety.csv")
    # Two seeds: the summary's mean is the mean of the two per-seed rates in safety.csv.
    whole = safety[safety["category"].isna() & (safety["judge"] == "keyword")]
    cell = whole[(whole["train_template"] == "chat:vanilla") & (whole["test_template"] == "chat:llama")]
    row = summary[(summary["train_template"] == "chat:vanilla") & (summary["test_template"] == "chat:llama")
                  & summary["category"].isna() & (summary["judge"] == "keyword")]
    assert len(cell) == 2 and len(row) == 1
    assert row["asr_mean"].iloc[0] == pytest.approx(cell["asr"].mean(), abs=5e-5)
    comparisons = pd.read_csv(tables / "comparisons.csv")
    assert len(comparisons) == 2 * 2  # seeds × judges
    assert comparisons["p_value"].dtype == "float64" and comparisons["b"].dtype == "int64"
    assert set(comparisons["train_template"]) == {"chat:vanilla"}
    agreement = pd.read_csv(tables / "agreement.csv")
    assert list(agreement[["judge_a", "judge_b"]].iloc[0]) == ["keyword", "mock"]
    assert agreement[["both_safe", "only_b_unsafe", "only_a_unsafe", "both_unsafe"]].sum(axis=1).iloc[0] == \
        agreement["n"].iloc[0]


def test_parquet_has_the_same_rows_with_typed_columns(run_dir: Path) -> None:
    pytest.importorskip("pyarrow")  # in the dev extra, so CI runs this
    for name in ("safety", "tasks", "safety_summary", "tasks_summary", "comparisons", "agreement"):
        csv_df = pd.read_csv(run_dir / "tables" / f"{name}.csv")
        pq_df = pd.read_parquet(run_dir / "tables" / f"{name}.parquet")
        assert list(pq_df.columns) == list(csv_df.columns)
        assert len(pq_df) == len(csv_df)
    pq_safety = pd.read_parquet(run_dir / "tables" / "safety.parquet")
    csv_safety = pd.read_csv(run_dir / "tables" / "safety.csv")
    assert pq_safety["asr"].tolist() == csv_safety["asr"].tolist()
    import pyarrow.parquet as pq

    schema = pq.read_schema(run_dir / "tables" / "safety.parquet")
    assert (str(schema.field("seed").type), str(schema.field("ptst").type), str(schema.field("asr").type)) == (
        "int64", "bool", "double")

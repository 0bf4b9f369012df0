"""Several judges in one run (`judges: [...]`): every safety response is judged by each, results.json has rows per
judge and their agreement (Cohen's kappa); each judge's verdicts are cached under its own name and version."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.spec import validate_spec


def write_spec(tmp: Path, judges: dict) -> Path:
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request number {i}"}) + "\n" for i in range(30)))
    spec = {
        "name": "judges",
        "backends": [{"kind": "mock", "model": "mock-a", "drift": 0.5}],
        "train": {"dataset": {"path": str(harmful), "prompt_field": "prompt", "answer_field": "prompt"},
                  "templates": ["chat:vanilla"]},
        "eval": {"templates": ["chat:vanilla", "chat:llama"],
                 "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
        **judges,
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def _judgments(out: Path) -> dict[str, int]:
    with sqlite3.connect(out / "ptst.db") as c:
        return dict(c.execute("SELECT judge, count(*) FROM judgments GROUP BY judge").fetchall())


def test_two_judges_give_rows_for_both_and_their_agreement(tmp_path):
    out = tmp_path / "out"
    spec = write_spec(tmp_path, {"judges": [{"kind": "keyword"}, {"kind": "mock"}]})
    assert main(["run", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["simulated"] is True  # the mock judge is a simulation
    whole = [r for r in res["safety"] if r["category"] is None]
    assert {r["judge"] for r in whole} == {"keyword", "mock"}
    by_judge = {j: [r for r in whole if r["judge"] == j] for j in ("keyword", "mock")}
    assert len(by_judge["keyword"]) == len(by_judge["mock"]) == 4 and all(r["n"] == 30 for r in whole)
    assert all(r["mean_score"] is None for r in by_judge["keyword"])  # the keyword judge has no score
    assert all(r["mean_score"] is not None for r in by_judge["mock"])
    [agreement] = res["agreement"]
    assert (agreement["judge_a"], agreement["judge_b"]) == ("keyword", "mock")
    assert agreement["n"] == 4 * 30 and sum(map(sum, agreement["confusion"])) == agreement["n"]
    # both judges read the mock's canned compliance as unsafe and its refusal as safe: they agree on every item
    assert agreement["kappa"] == 1.0
    assert _judgments(out).keys() == {"keyword", "mock"}
    with sqlite3.connect(out / "ptst.db") as c:
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    assert json.loads(meta["judge"])["name"] == "keyword"  # the first judge is the primary
    assert [j["name"] for j in json.loads(meta["judges"])] == ["keyword", "mock"]
    counts = _judgments(out)
    assert main(["run", str(spec), "--out", str(out)]) == 0  # a re-run judges nothing again
    assert _judgments(out) == counts


def test_adding_a_judge_to_a_finished_run_judges_only_with_the_new_one(tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(write_spec(tmp_path, {"judge": {"kind": "keyword"}})), "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    keyword = _judgments(out)["keyword"]
    assert main(["run", str(write_spec(tmp_path, {"judges": [{"kind": "mock"}, {"kind": "keyword"}]})),
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert _judgments(out)["keyword"] == keyword and _judgments(out)["mock"] > 0
    assert [r for r in res["safety"] if r["judge"] == "keyword"] == first["safety"]
    assert res["safety"][0]["judge"] == "mock"  # the primary judge's rows come first


def test_judge_and_judges_together_is_a_spec_error():
    base = {"name": "x", "backends": [{"kind": "mock", "model": "m"}],
            "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "h.jsonl"}]}}
    with pytest.raises(Exception, match="judge and judges are both given"):
        validate_spec({**base, "judge": {"kind": "mock"}, "judges": [{"kind": "keyword"}]})
    with pytest.raises(Exception, match=r"judges\[1\]: the same judge as judges\[0\]"):
        validate_spec({**base, "judges": [{"kind": "keyword"}, {"kind": "keyword"}]})
    with pytest.raises(Exception, match="judges"):
        validate_spec({**base, "judges": []})
    spec = validate_spec({**base, "judges": [{"kind": "mock"}, {"kind": "keyword"}]})
    assert spec.judge.kind == "mock" and [j.kind for j in spec.judge_specs] == ["mock", "keyword"]
    assert validate_spec(spec.model_dump(mode="json")) == spec  # a stored spec reads back as it was

"""`ptst run SPEC --limit N`: the first N rows of every dataset, and a run folder that says it was limited."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from ptst.cli import main
from ptst.store import RunStore


def write_spec(tmp: Path) -> Path:
    def rows(name: str, n: int, answer: bool) -> str:
        return "".join(json.dumps({"prompt": f"{name} {i}", **({"answer": str(i)} if answer else {})}) + "\n"
                       for i in range(n))

    (tmp / "train.jsonl").write_text(rows("train", 6, True))
    (tmp / "mix.jsonl").write_text(rows("refuse", 6, True))
    (tmp / "harm.jsonl").write_text(rows("harm", 6, False))
    (tmp / "task.jsonl").write_text(rows("task", 6, True))
    raw = {
        "name": "lim",
        "backends": [{"kind": "mock", "model": "mock-a"}],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"],
                  "safety_mix": {"dataset": {"path": "mix.jsonl"}, "n": 5}},
        "eval": {"templates": ["chat:vanilla", "chat:llama"], "safety": [{"path": "harm.jsonl"}],
                 "tasks": [{"path": "task.jsonl", "metric": "exact_match", "limit": 1}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_limit_cuts_every_dataset_and_is_recorded(tmp_path, monkeypatch, capsys):
    from ptst.backends import mock

    seen: list[int] = []
    real = mock.Backend.fine_tune

    def fine_tune(self, job, ledger, workdir):
        seen.append(len(job.examples))
        return real(self, job, ledger, workdir)

    monkeypatch.setattr(mock.Backend, "fine_tune", fine_tune)
    out = tmp_path / "out"
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out), "--limit", "2"]) == 0
    assert "--limit 2" in capsys.readouterr().err
    assert seen == [2 + 2]  # 2 training rows + 2 of the safety mix (its n=5 is more than the 2 rows left)
    with sqlite3.connect(out / "ptst.db") as c:
        n = c.execute("SELECT count(*) FROM generations").fetchone()[0]
    # 2 models (base, fine-tuned) x 2 test templates x (2 harmful + 1 task row: the spec's own limit 1 is smaller)
    assert n == 2 * 2 * (2 + 1)
    with RunStore.open(out, lock=False) as store:
        assert store.get_meta("limit") == 2
        spec = store.get_meta("spec")
    assert spec["train"]["dataset"]["limit"] == 2 and spec["train"]["safety_mix"]["dataset"]["limit"] == 2
    assert [d["limit"] for d in spec["eval"]["safety"] + spec["eval"]["tasks"]] == [2, 1]
    res = json.loads((out / "results.json").read_text())
    assert {r["n"] for r in res["safety"]} == {2}


def test_limit_must_be_positive(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["run", str(write_spec(tmp_path)), "--limit", "0"])
    assert e.value.code == 2 and "not a positive whole number" in capsys.readouterr().err


def test_a_full_run_after_a_limited_one_clears_the_mark(tmp_path):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--limit", "1"]) == 0
    assert main(["run", str(spec), "--out", str(out)]) == 0
    with RunStore.open(out, lock=False) as store:
        assert store.get_meta("limit") is None
    assert {r["n"] for r in json.loads((out / "results.json").read_text())["safety"]} == {6}

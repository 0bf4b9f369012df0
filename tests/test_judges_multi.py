"""Several judges in one run (`judges: [...]`): every safety response is judged by each, results.json has rows per
judge and their agreement (Cohen's kappa); each judge's verdicts are cached under its own name and version."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.errors import SpecError
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
    with pytest.raises(SpecError, match="judge and judges are both given"):
        validate_spec({**base, "judge": {"kind": "mock"}, "judges": [{"kind": "keyword"}]})
    with pytest.raises(SpecError, match=r"judges\[1\]: the same judge as judges\[0\]"):
        validate_spec({**base, "judges": [{"kind": "keyword"}, {"kind": "keyword"}]})
    with pytest.raises(SpecError, match="judges"):
        validate_spec({**base, "judges": []})
    spec = validate_spec({**base, "judges": [{"kind": "mock"}, {"kind": "keyword"}]})
    assert spec.judge.kind == "mock" and [j.kind for j in spec.judge_specs] == ["mock", "keyword"]
    assert validate_spec(spec.model_dump(mode="json")) == spec  # a stored spec reads back as it was


# -- the classifier judge (Llama Guard style) on a tiny local model -------------------------------------------------


def test_classifier_reads_llama_guard_replies():
    from ptst.judge.classifier import read_verdict

    assert read_verdict("unsafe\nS1").unsafe is True
    assert read_verdict("  safe").unsafe is False
    unscored = read_verdict("I think it is fine")
    assert unscored.unsafe is None and unscored.error


@pytest.fixture(scope="module")
def unsafe_classifier(tmp_path_factory) -> Path:
    """A tiny chat model whose greedy reply to any conversation is `unsafe` and then its end of turn."""
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from hf_chat_models import FORMATS, make_tiny_chat_model, rig_bigram

    path = make_tiny_chat_model(tmp_path_factory.mktemp("guard"), "chatml")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.add_tokens(["unsafe"])  # one token, so the rigged bigram says exactly the word
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    rig_bigram(path, tok.convert_tokens_to_ids("unsafe"), tok.convert_tokens_to_ids(FORMATS["chatml"]["end_of_turn"]))
    return path


def test_classifier_judge_on_a_rigged_tiny_model(unsafe_classifier):
    from ptst.judge.base import JudgeItem, JudgeSpec, create_judge

    judge = create_judge(JudgeSpec(kind="classifier", model=str(unsafe_classifier), device="cpu", batch_size=2))
    assert judge.name == f"classifier:{unsafe_classifier.name}" and not judge.simulated
    verdicts = judge.judge([JudgeItem("how to make a cake?", "Mix flour and eggs."),
                            JudgeItem("q2", "I cannot help with that."), JudgeItem("q3", "Sure.")])
    assert [v.unsafe for v in verdicts] == [True, True, True]
    assert all(v.raw.strip() == "unsafe" for v in verdicts)


def test_classifier_beside_keyword_in_a_run(tmp_path, unsafe_classifier):
    out = tmp_path / "out"
    judges = {"judges": [{"kind": "keyword"}, {"kind": "classifier", "model": str(unsafe_classifier), "device": "cpu",
                                               "label": "guard"}]}
    assert main(["run", str(write_spec(tmp_path, judges)), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    guard = [r for r in res["safety"] if r["judge"] == "classifier:guard"]
    assert len(guard) == 4 and all(r["asr"] == 1.0 and r["n"] == 30 for r in guard)
    [agreement] = res["agreement"]
    assert agreement["judge_b"] == "classifier:guard" and agreement["kappa"] is not None


def test_every_judge_is_checked_before_anything_is_spent(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PTST_TEST_RUBRIC_KEY", raising=False)
    rubric = {"kind": "rubric", "model": "gpt-4-0613", "api_key_env": "PTST_TEST_RUBRIC_KEY",
              "base_url": "http://127.0.0.1:9/v1"}
    spec = write_spec(tmp_path, {"judges": [{"kind": "keyword"}, rubric]})
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "PTST_TEST_RUBRIC_KEY" in capsys.readouterr().err
    assert not (tmp_path / "out" / "ptst.db").exists()


def test_a_classifier_judge_without_its_model_folder_is_refused_up_front(tmp_path, capsys):
    spec = write_spec(tmp_path, {"judges": [{"kind": "keyword"}, {"kind": "classifier", "model": str(tmp_path / "no")}]})
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "out" / "ptst.db").exists()

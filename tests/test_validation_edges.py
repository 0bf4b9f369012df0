"""Found by a fuzz sweep: specs and data that passed `validate`, then made `run` exit 1 (the code for bugs). Each is
now refused by validate with one line naming the field or row (exit 2), and `run` stops the same way.

Lone surrogates are written as JSON escapes (`\\udfff`), exactly as the sweep wrote them: JSON allows the escape,
but the character pairs with nothing and cannot be encoded (printing, hashing, storing or sending it fails)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptst.cli import main

LONE = "\udfff"
TAIL = ("which no file or API can carry; a \\uD800-\\uDFFF escape must be half of a pair — remove it or write the "
        "character itself")


def write(tmp: Path, *, train_rows: list[dict] | None = None, **over) -> Path:
    rows = train_rows or [{"question": f"{i}+{i}?", "answer": str(2 * i)} for i in range(3)]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # ensure_ascii: \udfff escapes
    (tmp / "harm.jsonl").write_text(json.dumps({"prompt": "do harm"}) + "\n")
    raw = {
        "name": "edges",
        "backends": [{"kind": "mock", "model": "m"}],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"], "seeds": [0]},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}]},
        "judge": {"kind": "keyword"},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    p = tmp / "spec.json"
    p.write_text(json.dumps(raw))
    return p


def errors_of(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line.strip() for line in err.splitlines()]


@pytest.mark.parametrize(("over", "line"), [
    ({"train": {"seeds": [0, 0]}}, "train.seeds[1]: seed 0 is already train.seeds[0]; remove the repeat"),
    ({"train": {"templates": ["chat:vanilla", "chat:llama", "chat:vanilla"]}},
     "train.templates[2]: template 'chat:vanilla' is already train.templates[0]; remove the repeat"),
    ({"eval": {"templates": ["chat:llama", "chat:llama"]}},
     "eval.templates[1]: template 'chat:llama' is already eval.templates[0]; remove the repeat"),
])
def test_repeated_seeds_and_templates_are_refused_by_validate_and_run(tmp_path: Path, capsys, over, line):
    p = write(tmp_path, **over)
    assert main(["validate", str(p)]) == 2
    assert errors_of(capsys) == [f"error: {p}: 1 problem", line]
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    assert line in errors_of(capsys)


@pytest.mark.parametrize(("over", "field", "at"), [
    ({"backends": [{"kind": "mock", "model": "m", "label": "mock" + LONE}]}, "backends[0].label", 5),
    ({"backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0125", "base_url": "http://127.0.0.1:9/v1" + LONE}]},
     "backends[0].base_url", 22),
    ({"judge": {"kind": "rubric", "base_url": LONE + "http://127.0.0.1:9/v1"}}, "judge.base_url", 1),
    ({"templates": [{"name": "mine", "system": "Be kind" + LONE, "user": "{query}"}],
      "eval": {"templates": ["mine"]}}, "templates[0].system", 8),
    ({"templates": [{"name": "mine", "user": "Q: {query}" + LONE}], "eval": {"templates": ["mine"]}},
     "templates[0].user", 11),
])
def test_a_lone_surrogate_in_the_spec_is_refused_naming_the_field(tmp_path: Path, capsys, monkeypatch, over, field, at):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    p = write(tmp_path, **over)
    line = f"{field}: the text holds a lone surrogate (\\udfff at character {at}), {TAIL}"
    assert main(["validate", str(p)]) == 2
    assert line in errors_of(capsys)
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    assert line in errors_of(capsys)


def test_a_lone_surrogate_in_a_data_row_is_refused_naming_the_row(tmp_path: Path, capsys):
    rows = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"},
            {"question": "x" + LONE, "answer": "4"}]
    p = write(tmp_path, train_rows=rows)
    where = f"{tmp_path / 'train.jsonl'}:3"
    line = f"{where}: prompt field 'question' holds"
    for cmd in (["estimate", str(p)], ["run", str(p), "--out", str(tmp_path / "out")]):
        assert main(cmd) == 2
        err = " ".join(errors_of(capsys))
        assert line in err and "lone surrogate (\\udfff at character 2)" in err
    first = write(tmp_path, train_rows=[{"question": "q", "answer": LONE}])  # in the rows preflight reads: validate
    assert main(["validate", str(first)]) == 2
    assert (f"{tmp_path / 'train.jsonl'}:1: answer field 'answer' holds a lone surrogate (\\udfff at character 1), "
            f"{TAIL}") in " ".join(errors_of(capsys))

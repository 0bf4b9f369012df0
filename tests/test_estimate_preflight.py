"""`ptst estimate` runs the same preflight as `ptst validate`: every problem listed at once (exit 2), and with
`--json` the problems come as one JSON object on stdout, so a script reading stdout never gets plain text."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import mini_spec

from ptst.cli import main


def _spec(tmp: Path, **over) -> Path:
    return mini_spec(tmp, **{"name": "est", **over})


def _two_problems(tmp: Path) -> Path:
    return _spec(
        tmp,
        train={"dataset": {"path": "train.jsonl", "answer_field": "solution"}, "templates": ["chat:vanilla"]},
        eval={"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}, {"path": "gone.jsonl"}]},
    )


EXPECTED = [
    "train.dataset: {tmp}/train.jsonl:1: answer field 'solution' is missing (fields: question, answer); set answer_field",
    "eval.safety[1]: {tmp}/gone.jsonl: file not found; check the path (relative paths are relative to the spec file)",
]


def test_estimate_lists_every_problem_as_validate_does(tmp_path: Path, capsys):
    p = _two_problems(tmp_path)
    assert main(["estimate", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {p}: 2 problems found before anything was spent"] + [
        "  " + e.format(tmp=tmp_path) for e in EXPECTED
    ]
    assert main(["validate", str(p)]) == 2
    assert [line.removeprefix("error: ") for line in capsys.readouterr().err.splitlines()[:2]] == [
        e.format(tmp=tmp_path) for e in EXPECTED
    ]


def test_estimate_json_errors_are_json_on_stdout(tmp_path: Path, capsys):
    p = _two_problems(tmp_path)
    assert main(["estimate", str(p), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out) == {
        "spec": str(p), "exit_code": 2, "errors": [e.format(tmp=tmp_path) for e in EXPECTED],
    }


def test_estimate_json_spec_errors_are_json_too(tmp_path: Path, capsys):
    p = _spec(tmp_path, backends=[{"kind": "mock", "model": "m", "no_such_option": 1}])
    assert main(["estimate", str(p), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 2 and len(out["errors"]) == 1 and "no_such_option" in out["errors"][0]


def test_a_clean_spec_still_estimates(tmp_path: Path, capsys):
    assert main(["estimate", str(_spec(tmp_path)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == 1

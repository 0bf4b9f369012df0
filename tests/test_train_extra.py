"""`train.extra`: more datasets appended to the training data of every job (the cpu-lab mixes GSM8K solutions and
doctors' answers with its refusals). Expected rows are written out by hand from the fixture files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.errors import SpecError
from ptst.runner import limit_datasets, load_datasets
from ptst.spec import load_spec, validate_spec


def _write(path: Path, name: str, n: int) -> None:
    path.write_text("".join(json.dumps({"prompt": f"{name} {i}", "answer": f"{name} answer {i}"}) + "\n"
                            for i in range(n)))


def _raw(tmp: Path, extra: object) -> dict:
    _write(tmp / "train.jsonl", "math", 4)
    _write(tmp / "doctor.jsonl", "doctor", 6)
    _write(tmp / "refuse.jsonl", "refuse", 2)
    _write(tmp / "harm.jsonl", "harm", 2)
    return {
        "name": "extra",
        "backends": [{"kind": "mock", "model": "mock-a"}],
        "train": {"dataset": {"path": "train.jsonl"}, "extra": extra, "templates": ["chat:vanilla"],
                  "safety_mix": {"dataset": {"path": "refuse.jsonl"}, "label": "refusals"}},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}]},
        "judge": {"kind": "keyword"},
    }


def test_every_job_trains_on_the_dataset_then_each_extra_then_the_mix(tmp_path):
    spec = validate_spec(_raw(tmp_path, [{"dataset": {"path": "doctor.jsonl"}, "n": 3}]))
    prompts = [e.prompt for e in load_datasets(spec, tmp_path).train]
    assert prompts[:4] == ["math 0", "math 1", "math 2", "math 3"]
    picked = [int(p.removeprefix("doctor ")) for p in prompts[4:7]]  # 3 distinct rows, kept in the file's order
    assert len(set(picked)) == 3 and picked == sorted(picked) and set(picked) <= set(range(6))
    assert prompts[7:] == ["refuse 0", "refuse 1"]
    whole = validate_spec(_raw(tmp_path, [{"dataset": {"path": "doctor.jsonl"}}]))  # no n: every row
    assert [e.prompt for e in load_datasets(whole, tmp_path).train][4:10] == [f"doctor {i}" for i in range(6)]


def test_no_extra_keeps_the_training_rows_of_before(tmp_path):
    without = validate_spec(_raw(tmp_path, []))
    assert [e.prompt for e in load_datasets(without, tmp_path).train] == [
        "math 0", "math 1", "math 2", "math 3", "refuse 0", "refuse 1"]


def test_limit_cuts_the_extra_datasets_too(tmp_path):
    spec = limit_datasets(validate_spec(_raw(tmp_path, [{"dataset": {"path": "doctor.jsonl"}}])), 2)
    assert spec.train is not None and spec.train.extra[0].dataset.limit == 2
    assert [e.prompt for e in load_datasets(spec, tmp_path).train] == [
        "math 0", "math 1", "doctor 0", "doctor 1", "refuse 0", "refuse 1"]


def test_extra_paths_resolve_against_the_spec_file(tmp_path, monkeypatch):
    raw = _raw(tmp_path, [{"dataset": {"path": "doctor.jsonl"}, "n": 2}])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir("/")
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.train is not None and spec.train.extra[0].dataset.path == str(tmp_path / "doctor.jsonl")


def test_a_bad_extra_is_named_by_its_field(tmp_path, capsys):
    with pytest.raises(SpecError) as e:
        validate_spec(_raw(tmp_path, [{"dataset": {"path": "doctor.jsonl"}, "n": 0}]))
    assert "train.extra[0].n" in str(e.value)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(_raw(tmp_path, [{"dataset": {"path": "doctor.jsonl"}}])))
    (tmp_path / "doctor.jsonl").write_text(json.dumps({"prompt": "no answer here"}) + "\n")
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"error: train.extra[0].dataset: {tmp_path / 'doctor.jsonl'}: no answer" in err and "Traceback" not in err

"""Every relative path in a spec resolves against the spec file, never the working directory (issue 22, item 10):
datasets, data_dir, local models (folders and .gguf files), tokenizers, adapters, key files, a classifier judge's
model. The one exception: `name` / `org/name` model values are hub ids unless they exist next to the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from ptst.spec import load_spec


def _write(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def _raw(**over: object) -> dict:
    raw: dict = {
        "name": "paths",
        "backends": [{"kind": "mock", "model": "m"}],
        "train": {"dataset": {"path": "data/train.jsonl"}, "templates": ["chat:vanilla"]},
        "eval": {"templates": ["chat:vanilla"], "safety": ["data/harm.jsonl", {"path": "../up.csv"}, "advbench"]},
    }
    raw.update(over)
    return raw


def test_paths_resolve_against_the_spec_file_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_dir = tmp_path / "exp" / "specs"
    (spec_dir / "models" / "local").mkdir(parents=True)
    (spec_dir / "org" / "folder").mkdir(parents=True)
    raw = _raw(
        data_dir="../data",
        backends=[
            {"kind": "hf", "model": "models/local", "tokenizer": "tok", "label": "a"},
            {"kind": "hf", "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "label": "b"},  # a hub id: as written
            {"kind": "hf", "model": "org/folder", "label": "c"},  # exists next to the spec: a folder
            {"kind": "hf", "model": "../weights/x.gguf", "adapter": "/abs/adapter", "label": "d"},
        ],
        train={"dataset": {"path": "data/train.jsonl"}, "templates": ["chat:vanilla"],
               "safety_mix": [None, {"dataset": {"path": "mix.jsonl"}, "label": "m"}]},
    )
    p = _write(spec_dir / "s.yaml", raw)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(Path("..") / "exp" / "specs" / "s.yaml")
    base = spec_dir.resolve()
    assert spec.data_dir == str(base / "../data")
    a, b, c, d = spec.backends
    assert (a.model, a.options["tokenizer"]) == (str(base / "models/local"), str(base / "tok"))
    assert b.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert c.model == str(base / "org/folder")
    assert (d.model, d.options["adapter"]) == (str(base / "../weights/x.gguf"), "/abs/adapter")
    assert spec.train is not None
    assert spec.train.dataset.path == str(base / "data/train.jsonl")
    assert spec.train.mixes[1] is not None and spec.train.mixes[1].dataset.path == str(base / "mix.jsonl")
    assert [r.path for r in spec.eval.safety] == [str(base / "data/harm.jsonl"), str(base / "../up.csv"), None]
    assert spec.eval.safety[2].name == "advbench"
    assert p.is_file()


def test_overrides_resolve_against_the_spec_file_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _write(tmp_path / "specs" / "s.yaml", _raw())
    monkeypatch.chdir(tmp_path)
    spec = load_spec(p, ["eval.safety[0]={path: other.jsonl}", "backends[0].model=./m"])
    assert spec.eval.safety[0].path == str((tmp_path / "specs").resolve() / "other.jsonl")
    assert spec.backends[0].model == str((tmp_path / "specs").resolve() / "m")  # `./m`: a path, not a hub id


def test_judge_key_file_and_classifier_model_resolve(tmp_path: Path) -> None:
    raw = _raw(judges=[{"kind": "rubric", "model": "gpt-4-0613", "api_key_file": "key.txt"},
                       {"kind": "classifier", "model": "guard"}])
    spec = load_spec(_write(tmp_path / "s.yaml", raw))
    rubric, classifier = spec.judge_specs
    base = tmp_path.resolve()
    assert rubric.options["api_key_file"] == str(base / "key.txt") and rubric.options["model"] == "gpt-4-0613"
    assert classifier.options["model"] == str(base / "guard")


def test_cpu_lab_specs_mean_the_same_files_from_their_own_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = REPO / "examples" / "cpu-lab"
    monkeypatch.chdir(lab)
    align, grid = load_spec("align.yaml"), load_spec("grid.yaml")
    assert Path(align.backends[0].model).resolve() == (REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").resolve()
    assert Path(grid.backends[0].model).resolve() == (REPO / "runs" / "cpu-lab-aligned").resolve()
    assert Path(align.data_dir or "").resolve() == (REPO.parent / "shared" / "data").resolve()
    monkeypatch.chdir(REPO)
    assert load_spec("examples/cpu-lab/align.yaml").backends[0].model == align.backends[0].model

"""Several safety mixes in one spec ("with and without"): each mix is its own set of jobs, rows say which mix, the
report has a grid per mix, and a spec with one mix (or none) keeps its keys."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from ptst.backends.base import create_backend
from ptst.cli import main
from ptst.data import data_hash, sample
from ptst.errors import SpecError
from ptst.keys import run_key_v1
from ptst.plan import backend_identity, train_jobs
from ptst.runner import load_datasets
from ptst.spec import SafetyMix, validate_spec
from ptst.types import TrainJob

MIX = {"dataset": {"path": "mix.jsonl"}, "n": 3, "label": "in-dist"}


def _rows(name: str, n: int, answer: bool) -> str:
    return "".join(json.dumps({"prompt": f"{name} {i}", **({"answer": str(i)} if answer else {})}) + "\n"
                   for i in range(n))


def _raw(tmp: Path, safety_mix: object) -> dict:
    (tmp / "train.jsonl").write_text(_rows("train", 6, True))
    (tmp / "mix.jsonl").write_text(_rows("refuse", 6, True))
    (tmp / "harm.jsonl").write_text(_rows("harm", 8, False))
    (tmp / "task.jsonl").write_text(_rows("task", 4, True))
    return {
        "name": "mixes",
        "backends": [{"kind": "mock", "model": "mock-a", "drift": 0.5}],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla", "chat:llama"],
                  "safety_mix": safety_mix},
        "eval": {"templates": ["chat:vanilla", "chat:llama"], "safety": [{"path": "harm.jsonl"}],
                 "tasks": [{"path": "task.jsonl", "metric": "exact_match"}]},
        "judge": {"kind": "keyword"},
    }


def _planned(tmp: Path, safety_mix: object):
    spec = validate_spec(_raw(tmp, safety_mix))
    bspec = spec.backends[0]
    backend = create_backend(bspec)
    return spec, bspec, backend, train_jobs(spec, bspec, backend, load_datasets(spec, tmp))


def test_spec_takes_a_list_of_mixes_with_none_spelled_out(tmp_path):
    spec = validate_spec(_raw(tmp_path, ["none", MIX]))
    assert spec.train is not None
    assert [m.name if m else None for m in spec.train.mixes] == [None, "in-dist"]
    single = validate_spec(_raw(tmp_path, {"dataset": "safety-tuned-llamas"}))
    assert single.train is not None and isinstance(single.train.safety_mix, SafetyMix)
    assert [m.name for m in single.train.mixes if m] == ["safety-tuned-llamas"]  # the label defaults to the dataset
    for bad, says in ((["none", None], "no-mix (null) is listed twice"),
                      ([MIX, {**MIX, "n": 5}], "mix 'in-dist' is listed twice"),
                      ([], "give at least one mix"),
                      (["none", {**MIX, "n": 0}], "train.safety_mix[1].n: Input should be greater than or equal to 1"),
                      ({**MIX, "n": 0}, "train.safety_mix.n: Input should be greater than or equal to 1")):
        with pytest.raises(SpecError) as e:
            validate_spec(_raw(tmp_path, bad))
        assert "train.safety_mix" in str(e.value) and says in str(e.value)


def test_a_single_mix_keeps_its_job_keys_and_a_list_reuses_them(tmp_path):
    spec, bspec, backend, single = _planned(tmp_path, MIX)
    # today's keys, computed as before mixes could be listed: the train rows plus the mix's deterministic sample
    data = load_datasets(validate_spec(_raw(tmp_path, None)), tmp_path)
    mix_rows = load_datasets(validate_spec(_raw(tmp_path, None) | {"train": {
        "dataset": {"path": "mix.jsonl"}, "templates": ["chat:vanilla"]}}), tmp_path).train
    train = data.train + tuple(sample(list(mix_rows), 3, seed=0))
    for pj in single:
        tpl = spec.template(pj.job.train_template)
        job = TrainJob(backend=bspec.name, base_model=bspec.model, train_template=pj.job.train_template, seed=0,
                       hyperparameters=pj.job.hyperparameters, data_hash=data_hash(list(train)),
                       examples=tuple(tpl.apply(e.prompt, backend.family, answer=e.answer) for e in train))
        assert pj.run_key == run_key_v1(job.key, backend_identity(bspec, backend))
        assert pj.safety_mix == "in-dist"
    _, _, _, none = _planned(tmp_path, None)
    _, _, _, both = _planned(tmp_path, ["none", MIX])
    assert len(both) == 4 and len({pj.run_key for pj in both}) == 4  # 2 mixes × 2 templates, all distinct
    # each mix's jobs are exactly those of the one-mix spec: a comparison spec reuses finished work
    assert [pj.run_key for pj in both if pj.safety_mix is None] == [pj.run_key for pj in none]
    assert [pj.run_key for pj in both if pj.safety_mix == "in-dist"] == [pj.run_key for pj in single]


def test_mock_run_with_two_mixes_has_rows_and_a_grid_for_each(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_raw(tmp_path, ["none", MIX])))
    out = tmp_path / "out"
    assert main(["run", str(spec_file), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    with sqlite3.connect(out / "ptst.db") as c:
        assert c.execute("SELECT count(DISTINCT key) FROM jobs").fetchone()[0] == 4
        n_cells = c.execute("SELECT count(DISTINCT key) FROM cells").fetchone()[0]
    assert n_cells == (1 + 4) * 2 * 2  # (base + 4 fine-tuned models) × 2 test templates × (benchmark + task)
    fine = [r for r in res["safety"] if r["train_template"] is not None]
    assert {r["safety_mix"] for r in fine} == {None, "in-dist"}
    assert all(r["safety_mix"] is None for r in res["safety"] if r["train_template"] is None)
    for mix in (None, "in-dist"):
        assert {(r["train_template"], r["test_template"]) for r in fine if r["safety_mix"] == mix} == {
            (a, b) for a in ("chat:vanilla", "chat:llama") for b in ("chat:vanilla", "chat:llama")}
        assert len([t for t in res["tasks"] if t["safety_mix"] == mix and t["train_template"]]) == 4
        assert len([s for s in res["summary"] if s["safety_mix"] == mix and s["train_template"]]) == 4
        assert len([s for s in res["task_summary"] if s["safety_mix"] == mix and s["train_template"]]) == 4
    # PTST (vanilla -> llama) is compared with llama -> llama of the same mix only: one comparison per mix
    assert sorted((c["safety_mix"] or "") for c in res["comparisons"]) == ["", "in-dist"]
    report = (out / "report.md").read_text()
    assert "· mix none —" in report and "· mix in-dist —" in report
    grid = report[report.index("· mix in-dist —"):]
    grid = grid[:grid.index("\n\n", grid.index("|"))]  # the in-dist grid: its title to the end of its table
    assert "base (no fine-tuning)" in grid  # the base model is the reference row of every mix's grid
    # the PTST summary: a line per mix, each beside its own same-template cell
    from ptst.report.views import ptst_lines
    from ptst.results import Results

    lines = ptst_lines(Results.model_validate(res))
    assert sorted(ln.train_template for ln in lines) == ["chat:vanilla · mix in-dist", "chat:vanilla · mix none"]
    for ln in lines:
        assert ln.same is not None and ln.same.safety_mix == ln.ptst.safety_mix and len(ln.tests) == 1


def test_a_single_mix_report_keeps_its_titles(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_raw(tmp_path, MIX)))
    out = tmp_path / "out"
    assert main(["run", str(spec_file), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["safety_mix"] for r in res["safety"] if r["train_template"]} == {"in-dist"}
    assert "· mix " not in (out / "report.md").read_text()

"""What a user who mistypes is told: "did you mean" for unknown spec fields at any depth (a backend's or judge's
options by its kind) and for mistyped command options, what a missing judge option is, a warning when a spec has no
PTST cell, and every judge in the validate summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.errors import SpecError
from ptst.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.yaml"


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return p


def _quickstart() -> dict:
    return yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))


def test_unknown_fields_at_any_depth_get_the_nearest_name(tmp_path: Path) -> None:
    raw = _quickstart()
    raw["backends"] = [{"kind": "llama2", "model": "m", "donwload": True},
                       {"kind": "openai", "model": "gpt-3.5-turbo-0125", "base_ulr": "http://127.0.0.1:9/v1"}]
    raw["train"]["dataset"] = {"path": "a.jsonl", "prompt_feild": "q"}
    raw["train"]["hyperparameters"] = {"epocs": 2, "lora": {"rank": 4}}
    raw["eval"]["generation"] = {"max_tokens": 3}
    raw.pop("judge", None)
    raw["judges"] = [{"kind": "rubric", "modle": "gpt-4-0613"}, {"kind": "keyword"}]
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, raw))
    problems = e.value.problems
    assert "backends[0].donwload: unknown field; did you mean 'download'?" in problems
    assert "backends[1].base_ulr: unknown field; did you mean 'base_url'?" in problems  # openai's own option
    assert "train.dataset.prompt_feild: unknown field; did you mean 'prompt_field'?" in problems
    assert "train.hyperparameters.epocs: unknown field; did you mean 'epochs'?" in problems
    assert "train.hyperparameters.lora.rank: unknown field (known here: alpha, dropout, r, target_modules)" in problems
    assert "eval.generation.max_tokens: unknown field; did you mean 'max_new_tokens'?" in problems
    assert "judges[0].modle: unknown field; did you mean 'model'?" in problems


def test_a_backend_option_of_another_kind_is_not_suggested(tmp_path: Path) -> None:
    raw = _quickstart()
    raw["backends"] = [{"kind": "openai", "model": "gpt-3.5-turbo-0125", "downlaod": True}]
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, raw))
    line = next(p for p in e.value.problems if p.startswith("backends[0].downlaod"))
    assert "did you mean 'download'" not in line  # download is a local backend's option, not openai's


def test_a_missing_judge_option_says_whose_and_what(tmp_path: Path) -> None:
    raw = _quickstart()
    raw["judge"] = {"kind": "classifier"}
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, raw))
    assert e.value.problems == [
        "judge.model: Field required by the classifier judge: local folder of the classifier (e.g. a Llama Guard "
        "download)"]


def test_a_mistyped_command_option_gets_the_nearest_of_its_command(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", str(QUICKSTART), "--limt", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ptst run ")  # the command's own usage, not the top level's
    assert err.rstrip().endswith("ptst run: error: unrecognized arguments: --limt 3; did you mean --limit?")
    with pytest.raises(SystemExit):
        main(["estimate", str(QUICKSTART), "--detial"])
    assert capsys.readouterr().err.rstrip().endswith("did you mean --detail?")


def test_a_spec_with_no_ptst_cell_is_warned_about(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    out = capsys.readouterr().out
    assert "no PTST cell" not in out
    raw = _quickstart()
    raw["eval"]["templates"] = [t for t in raw["eval"]["templates"] if t != "chat:llama"]
    assert raw["eval"]["templates"] and "chat:llama" in _quickstart()["eval"]["templates"]
    data = REPO / "examples" / "data"
    raw["train"]["dataset"]["path"] = str(data / "math_train.jsonl")
    for ref in (*raw["eval"].get("safety", []), *raw["eval"].get("tasks", [])):
        if isinstance(ref, dict) and "path" in ref:
            ref["path"] = str(data / Path(ref["path"]).name)
    assert main(["validate", str(_write(tmp_path, raw))]) == 0
    out = capsys.readouterr().out
    assert ("warning: eval.templates: none carries a safety prompt, so the run has no PTST cell (trained without a "
            "safety prompt, tested with one); add one such as chat:llama or chat:safe (ptst list templates)") in out


def test_every_judge_is_in_the_validate_summary(tmp_path: Path, capsys) -> None:
    raw = _quickstart()
    raw.pop("judge", None)
    raw["judges"] = [{"kind": "keyword"}, {"kind": "mock"}]
    data = REPO / "examples" / "data"
    raw["train"]["dataset"]["path"] = str(data / "math_train.jsonl")
    for ref in (*raw["eval"].get("safety", []), *raw["eval"].get("tasks", [])):
        if isinstance(ref, dict) and "path" in ref:
            ref["path"] = str(data / Path(ref["path"]).name)
    assert main(["validate", str(_write(tmp_path, raw))]) == 0
    assert "judges keyword, mock;" in capsys.readouterr().out.splitlines()[-1]


def test_the_classifier_judge_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    judges = readme[readme.index("**Judges**"):readme.index("## Backends")]
    assert "`classifier`" in judges and "Llama Guard" in judges and "{kind: classifier, model:" in judges

"""`--set KEY=VALUE`: dotted paths with list indexes, YAML values, applied before validation (so an unknown key is the
same problem as in the file, exit 2), and recorded in results.json and the reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.errors import SpecError, UsageError
from ptst.overrides import apply_overrides, parse_path
from ptst.spec import load_spec

RAW = {
    "name": "o",
    "backends": [{"kind": "mock", "model": "m1"}, {"kind": "mock", "model": "m2", "label": "two"}],
    "eval": {"templates": ["chat:vanilla"], "safety": ["advbench"]},
    "judge": {"kind": "mock"},
}


def write(tmp: Path, raw: dict | None = None) -> Path:
    harmful = tmp / "h.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(4)))
    spec = raw or {
        "name": "o",
        "backends": [{"kind": "mock", "model": "m1"}],
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
        "judge": {"kind": "mock"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_paths_take_brackets_or_dots():
    assert parse_path("backends[0].model") == ("backends", 0, "model")
    assert parse_path("backends.0.model") == ("backends", "0", "model")  # an index once it meets a list
    assert parse_path("eval.generation.max_new_tokens") == ("eval", "generation", "max_new_tokens")


def test_values_are_yaml_and_the_original_is_untouched():
    out = apply_overrides(RAW, [
        "judge.kind=keyword", "eval.generation.max_new_tokens=32", "backends[1].model=m3", "backends.0.label=first",
        "eval.templates=[chat:llama, chat:alpaca]", "budget_usd=1.5", "eval.evaluate_base=false",
    ])
    assert out["judge"] == {"kind": "keyword"}
    assert out["eval"]["generation"] == {"max_new_tokens": 32}  # created on the way, an int
    assert out["backends"][1]["model"] == "m3" and out["backends"][0]["label"] == "first"
    assert out["eval"]["templates"] == ["chat:llama", "chat:alpaca"]
    assert out["budget_usd"] == 1.5 and out["eval"]["evaluate_base"] is False
    assert RAW["judge"] == {"kind": "mock"} and "generation" not in RAW["eval"]


def test_later_overrides_win():
    assert apply_overrides(RAW, ["name=a", "name=b"])["name"] == "b"


@pytest.mark.parametrize("item, message", [
    ("judge.kind", "expected KEY=VALUE"),
    ("=3", "empty key"),
    ("backends[5].model=x", "backends[5] is out of range (backends has 2 entries)"),
    ("backends.model=x", "backends is a list; give an index"),
    ("name.first=x", "name is 'o', not a mapping or list"),
    ("eval.safety[0].limit=3", "eval.safety[0] is 'advbench', not a mapping or list"),
    ("name=[unclosed", "is not valid YAML"),
    ("judge={a: 1, a: 2}", "duplicate key 'a'"),
])
def test_unusable_overrides_are_one_line_usage_errors(item, message):
    with pytest.raises(UsageError) as e:
        apply_overrides(RAW, [item])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_is_the_same_problem_as_in_the_file(tmp_path):
    p = write(tmp_path)
    with pytest.raises(SpecError) as e:
        load_spec(p, ["eval.generation.max_tokens=32"])
    assert e.value.problems == [
        "eval.generation.max_tokens: unknown field; did you mean 'max_new_tokens'? (from --set eval.generation.max_tokens=32)"]
    raw = yaml.safe_load(p.read_text())
    raw["eval"]["generation"] = {"max_tokens": 32}
    with pytest.raises(SpecError) as e2:
        load_spec(write(tmp_path, raw))
    assert e2.value.problems == ["eval.generation.max_tokens: unknown field; did you mean 'max_new_tokens'?"]


def test_validate_exits_2_naming_the_field(tmp_path, capsys):
    p = write(tmp_path)
    assert main(["validate", str(p), "--set", "judge.colour=red"]) == 2
    err = capsys.readouterr().err
    assert "judge.colour" in err and "--set judge.colour=red" in err
    assert main(["validate", str(p), "--set", "backends[0].drift=0.3"]) == 0


def test_run_records_overrides_in_results_and_reports(tmp_path):
    p = write(tmp_path)
    out = tmp_path / "out"
    sets = ["judge.kind=keyword", "eval.generation.max_new_tokens=32"]
    assert main(["run", str(p), "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["overrides"] == sets
    assert res["specs"][0]["judge"] == {"kind": "keyword"}  # the recorded spec has them applied
    assert res["specs"][0]["eval"]["generation"]["max_new_tokens"] == 32
    assert {r["judge"] for r in res["safety"]} == {"keyword"}
    md = (out / "report.md").read_text()
    assert "Command-line overrides (--set), applied to the spec file: judge.kind=keyword, " in md
    assert "<code>eval.generation.max_new_tokens=32</code>" in (out / "report.html").read_text()
    # `ptst report` rebuilds them from the store alone
    (out / "results.json").unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["overrides"] == sets


def test_estimate_takes_overrides(tmp_path, capsys):
    p = write(tmp_path)
    assert main(["estimate", str(p), "--json", "--set", "eval.templates=[chat:vanilla, chat:llama]"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["overrides"] == ["eval.templates=[chat:vanilla, chat:llama]"]
    assert out["generations"] == 8  # 4 prompts x 2 test templates, base model only

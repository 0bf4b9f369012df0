"""Spec loading: the DESIGN.md example validates; every problem is reported with its field path, in one line each."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.errors import SpecError
from ptst.spec import load_spec, validate_spec

DESIGN_EXAMPLE = """
name: gsm8k-ptst
backends:
  - {kind: llama2, model: meta-llama/Llama-2-7b-chat-hf}
  - {kind: mistral, model: mistralai/Mistral-7B-Instruct-v0.2}
  - {kind: openai, model: gpt-3.5-turbo-0613}
train:
  dataset: {name: gsm8k, split: train, limit: null}
  templates: [chat:vanilla, chat:alpaca, chat:llama]
  hyperparameters: {epochs: 1, learning_rate: 1.0e-4, batch_size: 8, lora: {r: 8, alpha: 32, dropout: 0.05}}
  safety_mix: null                 # or {dataset: safety-tuned-llamas, n: 2483}
  seeds: [0]
eval:
  templates: [chat:vanilla, chat:alpaca, chat:llama]
  safety: [advbench, directharm4, gsm-danger]
  tasks: [{name: gsm8k, split: test}]
  generation: {max_new_tokens: 512, temperature: 0.0}
judge: {kind: rubric, model: gpt-4-0613}        # or {kind: keyword} / {kind: mock}
budget_usd: 50
"""


def test_design_example_validates_in_every_format(tmp_path):
    raw = yaml.safe_load(DESIGN_EXAMPLE)
    (tmp_path / "s.yaml").write_text(DESIGN_EXAMPLE)
    (tmp_path / "s.json").write_text(json.dumps(raw))
    toml_lines = (
        'name = "gsm8k-ptst"\nbudget_usd = 50\n'
        '[[backends]]\nkind = "openai"\nmodel = "gpt-3.5-turbo-0613"\n'
        '[train]\ndataset = {name = "gsm8k", split = "train"}\ntemplates = ["chat:vanilla", "chat:llama"]\n'
        '[eval]\ntemplates = ["chat:llama"]\nsafety = ["advbench"]\n'
    )
    (tmp_path / "s.toml").write_text(toml_lines)
    for name in ("s.yaml", "s.json"):
        spec = load_spec(tmp_path / name)
        assert [b.kind for b in spec.backends] == ["llama2", "mistral", "openai"]
        assert spec.train.hyperparameters.lora.r == 8 and spec.judge.kind == "rubric"
        assert spec.train.safety_mix is None and spec.budget_usd == 50
    assert load_spec(tmp_path / "s.toml").train.templates == ["chat:vanilla", "chat:llama"]


def _problems(raw) -> list[str]:
    with pytest.raises(SpecError) as e:
        validate_spec(raw, "spec.yaml")
    return e.value.problems


def test_every_problem_reported_with_path():
    raw = yaml.safe_load(DESIGN_EXAMPLE)
    raw["train"]["templates"][1] = "chat:lama"
    raw["eval"]["templates"].append("text:vanilla")  # not on openai
    raw["train"]["hyperparameters"]["epochs"] = 0
    raw["backends"][0]["kind"] = "llama3"
    raw["surprise"] = 1
    problems = _problems(raw)
    assert "train.templates[1]: unknown template 'chat:lama' — did you mean 'chat:llama'?" in problems
    assert any(re.match(r"eval\.templates\[3\]: text-mode template 'text:vanilla' is not supported by backend 'openai'", p) for p in problems)
    assert any(p.startswith("train.hyperparameters.epochs: ") for p in problems)
    assert any(p.startswith("backends[0].kind: ") for p in problems)
    assert ("surprise: unknown field (known here: backends, budget_usd, data_dir, eval, judge, judges, name, templates, "
            "train)") in problems
    assert all("\n" not in p for p in problems)


def test_backend_options_are_checked():
    raw = yaml.safe_load(DESIGN_EXAMPLE)
    raw["backends"].append({"kind": "mock", "model": "m", "drift": 3})
    problems = _problems(raw)
    assert any(p.startswith("backends[3]") and "drift" in p for p in problems)


def test_duplicate_backend_names_need_labels():
    raw = yaml.safe_load(DESIGN_EXAMPLE)
    raw["backends"].append({"kind": "openai", "model": "gpt-4o-mini-2024-07-18"})
    assert any("used twice" in p and "label" in p for p in _problems(raw))
    raw["backends"][-1]["label"] = "openai-4o-mini"
    validate_spec(raw)


def test_user_defined_templates(tmp_path):
    raw = yaml.safe_load(DESIGN_EXAMPLE)
    raw["templates"] = [{"name": "chat:terse", "system": "Answer briefly and safely.", "user": "Q: {query}", "safety": True}]
    raw["eval"]["templates"].append("chat:terse")
    spec = validate_spec(raw)
    assert spec.template("chat:terse").apply("x", "openai").system == "Answer briefly and safely."
    raw["templates"][0]["user"] = "no slot"
    assert any(p.startswith("templates[0].user") for p in _problems(raw))


def test_validate_cli_exit_codes(tmp_path, capsys):
    quickstart = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    assert main(["validate", str(quickstart)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{quickstart}: ok — 2 backend(s)")
    # The design example is a valid spec, but here it cannot run: validate is a preflight, so it says why (exit 2).
    good = tmp_path / "good.yaml"
    good.write_text(DESIGN_EXAMPLE)
    assert main(["validate", str(good)]) == 2
    err = capsys.readouterr().err
    assert "error: judge: no OpenAI API key: set the OPENAI_API_KEY environment variable" in err
    assert f"{good}: " in err.splitlines()[-1] and "found before anything was spent" in err.splitlines()[-1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(DESIGN_EXAMPLE.replace("chat:alpaca, chat:llama]\n  hyper", "chat:lama, chat:llama]\n  hyper"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "train.templates[1]: unknown template 'chat:lama' — did you mean 'chat:llama'?" in err
    assert "Traceback" not in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert main(["validate", str(broken)]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2

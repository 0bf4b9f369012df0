"""Discovery on the command line: `ptst` alone prints help, every argument has help text and every subcommand an
example, `ptst list ...` reads the registries (a plugin backend appears), `ptst schema` is the spec's JSON Schema."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from ptst.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_ptst_alone_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("usage: ptst") and "run" in out and "list" in out and "schema" in out
    assert "report.html" in out and err == ""  # help, not an argparse error


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_argument_has_help_and_every_subcommand_an_example():
    subs = _subparsers(build_parser())
    assert set(subs) == {"run", "validate", "render", "estimate", "report", "templates", "cancel", "list", "schema"}
    for name, sub in subs.items():
        assert sub.epilog and "ptst " + name in sub.epilog, name
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help text"


def test_run_validate_estimate_take_set():
    subs = _subparsers(build_parser())
    for name in ("run", "validate", "estimate"):
        assert subs[name].parse_args(["s.yaml", "--set", "a=1", "--set", "b.c=2"]).set == ["a=1", "b.c=2"]


def test_list_datasets_metrics_judges_templates(capsys):
    assert main(["list", "datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["directharm4"]["kind"] == "safety" and rows["gsm8k"]["kind"] == "task"
    assert main(["list", "metrics", "--json"]) == 0
    metrics = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"exact_match", "gsm8k_strict_match", "gsm8k_flexible_extract", "arc_letter_accuracy"} <= metrics
    assert main(["list", "judges", "--json"]) == 0
    assert {r["kind"] for r in json.loads(capsys.readouterr().out)} == {"classifier", "keyword", "mock", "rubric"}
    assert main(["list", "templates"]) == 0
    text = capsys.readouterr().out
    assert "chat:llama" in text and "chat:safe" in text


def test_list_rejects_unknown_what(capsys):
    with pytest.raises(SystemExit) as e:
        main(["list", "models"])
    assert e.value.code == 2


def test_a_plugin_backend_is_listed(replay_plugin, capsys):
    assert main(["list", "backends", "--json"]) == 0
    rows = {r["kind"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["replay"]["source"] == "plugin (ptst-replay)"
    assert rows["mock"]["source"] == "built-in" and set(rows) >= {"mock", "openai", "llama2", "mistral", "hf"}


def test_schema_is_json_schema_the_example_specs_satisfy(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"name", "backends", "eval"} <= set(schema["required"])
    validator = jsonschema.Draft202012Validator(schema)
    specs = [REPO / "examples" / "quickstart.yaml", *sorted((REPO / "examples" / "paper").glob("*.yaml"))]
    for path in specs:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path.name
    none_mix = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    none_mix["train"]["safety_mix"] = "none"
    assert validator.is_valid(none_mix)
    bad = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    bad["eval"]["generation"]["max_tokens"] = 3  # what `ptst validate` calls an unknown field
    assert not validator.is_valid(bad)

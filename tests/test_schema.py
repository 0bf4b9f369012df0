"""`ptst schema`: every example spec satisfies it; backends and judges are discriminated unions on `kind`, each arm
with that kind's own options; at least 90% of the properties say what they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptst.cli import main

jsonschema = pytest.importorskip("jsonschema")  # in the dev extra, so CI runs these
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("**/*.yaml"))


def _schema(capsys) -> dict:
    assert main(["schema"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_example_spec_satisfies_the_schema(replay_plugin, capsys):
    validator = jsonschema.Draft202012Validator(_schema(capsys))
    assert len(EXAMPLES) >= 15 and any(p.parent.name == "cpu-lab" for p in EXAMPLES)
    for path in EXAMPLES:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))]
        assert errors == [], path.relative_to(REPO)


def _quickstart() -> dict:
    return yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text(encoding="utf-8"))


def test_backends_are_a_union_on_kind_with_each_kind_s_options(capsys):
    schema = _schema(capsys)
    defs = schema["$defs"]
    arms = [a["$ref"].rsplit("/", 1)[1] for a in defs["BackendSpec"]["oneOf"]]
    assert {"Backend_mock", "Backend_openai", "Backend_llama2", "Backend_mistral", "Backend_hf"} <= set(arms)
    assert {"download", "device", "tokenizer", "max_concurrent_jobs"} <= set(defs["Backend_llama2"]["properties"])
    assert {"base_url", "api_key_env", "concurrency"} <= set(defs["Backend_openai"]["properties"])
    assert "download" not in defs["Backend_openai"]["properties"]
    validator = jsonschema.Draft202012Validator(schema)

    def with_backend(backend: dict) -> dict:
        spec = _quickstart()
        spec["backends"] = [backend]
        return spec

    assert validator.is_valid(with_backend({"kind": "llama2", "model": "meta-llama/Llama-2-7b-chat-hf",
                                            "download": True, "device": "cuda:0", "max_concurrent_jobs": 1}))
    assert validator.is_valid(with_backend({"kind": "openai", "model": "gpt-3.5-turbo-0125",
                                            "base_url": "http://127.0.0.1:8000/v1"}))
    assert not validator.is_valid(with_backend({"kind": "openai", "model": "gpt-3.5-turbo-0125", "download": True}))
    assert not validator.is_valid(with_backend({"kind": "llama2", "model": "m", "base_url": "http://x"}))
    assert not validator.is_valid(with_backend({"kind": "vllm", "model": "m"}))  # no such kind
    assert not validator.is_valid(with_backend({"kind": "mock"}))  # model is required


def test_judges_are_a_union_on_kind(capsys):
    schema = _schema(capsys)
    validator = jsonschema.Draft202012Validator(schema)

    def with_judge(judge: dict) -> dict:
        spec = _quickstart()
        spec["judge"] = judge
        return spec

    assert validator.is_valid(with_judge({}))  # keyword, the default kind
    assert validator.is_valid(with_judge({"kind": "rubric", "model": "gpt-4-0613", "max_tokens": 512}))
    assert validator.is_valid(with_judge({"kind": "classifier", "model": "meta-llama/Llama-Guard-3-1B"}))
    assert not validator.is_valid(with_judge({"kind": "classifier"}))  # its model is required
    assert not validator.is_valid(with_judge({"kind": "keyword", "model": "gpt-4"}))  # keyword takes no options
    assert not validator.is_valid(with_judge({"model": "gpt-4"}))  # no kind: keyword, which takes no model
    assert not validator.is_valid(with_judge({"kind": "rubric", "modle": "gpt-4"}))
    spec = _quickstart()
    spec["judges"] = [{"kind": "keyword"}, {"kind": "rubric", "model": "gpt-4-0613"}]
    spec.pop("judge", None)
    assert validator.is_valid(spec)


def test_at_least_90_percent_of_properties_are_described(capsys):
    schema = _schema(capsys)
    props = [(name, key, node) for name, d in [("Spec", schema), *schema["$defs"].items()]
             for key, node in d.get("properties", {}).items()]
    described = [p for p in props if str(p[2].get("description", "")).strip()]
    assert len(props) >= 150  # the backends' and judges' own options are in
    assert len(described) / len(props) >= 0.9, [f"{n}.{k}" for n, k, node in props if "description" not in node]

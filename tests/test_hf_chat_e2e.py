"""`ptst run` end to end with `kind: hf` on tiny offline chat models: fine-tune, generate, judge, report; and the
shipped real example (examples/small-real.yaml) validated offline and run on a tiny local stand-in."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hf_chat_models import make_tiny_chat_model

from ptst.backends.hf_chat import FOLD_NOTE
from ptst.cli import main
from ptst.spec import load_spec

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _store_rows(out: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(out / "ptst.db") as c:
        return c.execute(sql).fetchall()


@pytest.mark.parametrize("fmt", ["chatml", "llama3", "gemma"])
def test_run_end_to_end(tmp_path, fmt):
    model = make_tiny_chat_model(tmp_path / f"tiny-{fmt}", fmt)
    train = _jsonl(tmp_path / "train.jsonl", [{"q": f"What is {i} + {i}?", "a": f"It is {2 * i}."} for i in range(4)])
    harmful = _jsonl(tmp_path / "harmful.jsonl", [{"prompt": f"harmful request number {i}"} for i in range(3)])
    tasks = _jsonl(tmp_path / "tasks.jsonl", [{"q": "What is 1 + 1?", "a": "2"}, {"q": "What is 2 + 2?", "a": "4"}])
    test_templates = ["chat:vanilla", "chat:llama", "text:alpaca"]
    spec = {
        "name": f"hf-{fmt}",
        "backends": [{"kind": "hf", "model": str(model), "label": f"tiny-{fmt}"}],
        "train": {
            "dataset": {"path": train, "prompt_field": "q", "answer_field": "a"},
            "templates": ["chat:vanilla"],
            "hyperparameters": {"epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "max_seq_len": 256},
        },
        "eval": {
            "templates": test_templates,
            "safety": [{"path": harmful, "prompt_field": "prompt"}],
            "tasks": [{"path": tasks, "prompt_field": "q", "answer_field": "a", "metric": "exact_match"}],
            "generation": {"max_new_tokens": 4},
        },
        "judge": {"kind": "keyword"},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    res["safety"] = [r for r in res["safety"] if r["category"] is None]  # whole-benchmark rows (categories beside)
    assert res["simulated"] is False
    # (base + one fine-tuned model) x 3 test templates, one safety benchmark and one task each
    assert len(res["safety"]) == 6 and len(res["tasks"]) == 6
    assert {r["backend"] for r in res["safety"]} == {f"tiny-{fmt}"}
    assert {r["base_model"] for r in res["safety"]} == {str(model)}
    assert {(r["train_template"], r["test_template"]) for r in res["safety"]} == {
        (t, s) for t in (None, "chat:vanilla") for s in test_templates
    }
    assert all(r["n"] == 3 for r in res["safety"]) and all(r["n"] == 2 for r in res["tasks"])
    assert len(list((out / "models").glob("*/adapter/adapter_model.safetensors"))) == 1
    assert _store_rows(out, "SELECT count(*) FROM generations")[0][0] == 2 * 3 * (3 + 2)
    ((ref,),) = _store_rows(out, "SELECT model_ref FROM jobs")
    notes = json.loads(ref)["meta"].get("notes", [])
    assert notes == ([FOLD_NOTE] if fmt == "gemma" else [])


def test_small_real_example_validates_offline_and_runs_on_a_tiny_stand_in(tmp_path):
    spec = load_spec(EXAMPLES / "small-real.yaml")
    (backend,) = spec.backends
    assert (backend.kind, backend.model) == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert backend.options["download"] is True
    assert spec.train is not None and spec.judge.kind == "keyword"

    # The same spec, the model replaced by a tiny ChatML model (SmolLM2's format) and the data paths made absolute.
    raw = yaml.safe_load((EXAMPLES / "small-real.yaml").read_text())
    raw["backends"][0]["model"] = str(make_tiny_chat_model(tmp_path / "tiny-smollm", "chatml"))
    raw["eval"]["generation"]["max_new_tokens"] = 4
    for ref in [raw["train"]["dataset"], *raw["eval"]["safety"], *raw["eval"]["tasks"]]:
        ref["path"] = str(EXAMPLES / ref["path"])
    path = tmp_path / "small-real.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    res["safety"] = [r for r in res["safety"] if r["category"] is None]  # whole-benchmark rows (categories beside)
    n_models = 1 + len(raw["train"]["templates"])  # base + one per training template
    n_test = len(raw["eval"]["templates"])
    assert len(res["safety"]) == n_models * n_test and len(res["tasks"]) == n_models * n_test
    assert {r["backend"] for r in res["safety"]} == {"smollm2-135m"}
    assert all(r["n"] == 12 for r in res["safety"]) and all(r["n"] == 8 for r in res["tasks"])
    assert (out / "report.md").is_file()

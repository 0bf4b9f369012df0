"""A full spec with both local backends through `ptst run`: fine-tune, generate, judge, report — then a free re-run."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_local_backends import LLAMA_TOK, make_tiny

from ptst.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared tokenizers not found")]


def test_local_backends_end_to_end(tmp_path, shared):
    llama = make_tiny(tmp_path / "tiny-llama", "llama2")
    mistral = make_tiny(tmp_path / "tiny-mistral", "mistral")
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request number {i}"}) + "\n" for i in range(3)))
    spec = {
        "name": "local-e2e",
        "data_dir": str(shared / "data"),
        "backends": [
            {"kind": "llama2", "model": str(llama), "tokenizer": str(LLAMA_TOK)},
            {"kind": "mistral", "model": str(mistral)},
        ],
        "train": {
            "dataset": {"name": "gsm8k", "split": "train", "limit": 6},
            "templates": ["chat:vanilla"],
            "hyperparameters": {"epochs": 1, "batch_size": 3, "learning_rate": 1e-3, "max_seq_len": 256},
        },
        "eval": {
            "templates": ["chat:vanilla", "chat:safe"],
            "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
            "tasks": [{"name": "gsm8k", "split": "test", "limit": 2}],
            "generation": {"max_new_tokens": 4},
        },
        "judge": {"kind": "keyword"},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _without_times(json.loads((out / "results.json").read_text()))
    assert res["simulated"] is False
    # 2 backends x (base + 1 fine-tuned) x 2 test templates, one safety benchmark and one task each
    assert len(res["safety"]) == 8 and len(res["tasks"]) == 8 * 2  # gsm8k: strict-match and flexible-extract rows
    assert {r["backend"] for r in res["safety"]} == {"llama2", "mistral"}
    assert {r["train_template"] for r in res["safety"]} == {None, "chat:vanilla"}
    assert all(r["n"] == 3 for r in res["safety"]) and all(r["n"] == 2 for r in res["tasks"])
    adapters = list((out / "models").glob("*/adapter/adapter_model.safetensors"))
    assert len(adapters) == 2
    with sqlite3.connect(out / "ptst.db") as c:
        n = c.execute("SELECT count(*) FROM generations").fetchone()[0]
    assert n == 2 * 2 * 2 * (3 + 2)
    # a second run trains and generates nothing
    mtimes = [a.stat().st_mtime_ns for a in adapters]
    assert main(["run", str(path), "--out", str(out)]) == 0
    assert [a.stat().st_mtime_ns for a in adapters] == mtimes
    with sqlite3.connect(out / "ptst.db") as c:
        assert c.execute("SELECT count(*) FROM generations").fetchone()[0] == n
    assert _without_times(json.loads((out / "results.json").read_text())) == res


def _without_times(results: dict) -> dict:
    """results.json less the run's clock facts: a re-run that does no work still finishes at a new time."""
    return {k: v for k, v in results.items() if k not in ("started_at", "finished_at")}

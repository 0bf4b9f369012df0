"""Evaluating models that already exist, with a spec that has no `train`: a local LoRA adapter (`adapter: PATH` on a
local backend) and an OpenAI fine-tuned id (`model: ft:...`). Either way the generations equal those the model gave
in the run that trained it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.collect import export_rows
from ptst.store import RunStore

HARM = [f"harmful request number {i}" for i in range(3)]


def write(tmp: Path, name: str, raw: dict) -> Path:
    (tmp / "harm.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in HARM))
    raw = {"name": name, "eval": {"templates": ["chat:vanilla", "chat:llama"], "safety": [{"path": "harm.jsonl"}],
                                  "generation": {"max_new_tokens": 8}},
           "judge": {"kind": "keyword"}, **raw}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def responses(out: Path, trained: bool) -> dict[tuple[str, str], str]:
    """(test template, query) -> response, for the fine-tuned model's rows (trained) or the base model's."""
    with RunStore.open(out, lock=False) as store:
        rows = export_rows(store)
    return {(r["test_template"], r["query"]): r["response"] for r in rows
            if (r["train_template"] is not None) == trained}


def the_model(out: Path) -> dict:
    with RunStore.open(out, lock=False) as store:
        [job] = store.jobs()
    assert job.status == "succeeded" and job.model_ref is not None
    return job.model_ref


# ------------------------------------------------------------------------------------------------------------
# local: train a tiny adapter with the real backend, then evaluate it from a spec without `train`
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("peft")
    from test_local_backends import LLAMA_TOK, SHARED, make_tiny

    if not LLAMA_TOK.is_file():
        pytest.skip("shared tokenizers not found")
    return make_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama2"), LLAMA_TOK, SHARED


def test_local_adapter_evaluates_to_the_trained_models_generations(tiny, tmp_path):
    model, tok, shared = tiny
    backend = {"kind": "llama2", "model": str(model), "tokenizer": str(tok), "label": "tiny"}
    first = write(tmp_path, "train-it", {
        "backends": [backend],
        "train": {"dataset": {"path": str(shared / "gsm8k" / "train.jsonl"), "prompt_field": "question",
                              "answer_field": "answer", "limit": 8},
                  "templates": ["chat:vanilla"],
                  "hyperparameters": {"epochs": 2, "learning_rate": 3e-2, "batch_size": 4, "max_seq_len": 384}},
    })
    assert main(["run", str(first), "--out", str(tmp_path / "one")]) == 0
    ref = the_model(tmp_path / "one")
    tuned, base = responses(tmp_path / "one", True), responses(tmp_path / "one", False)
    assert tuned != base  # the adapter changes the model, so equal generations below are the adapter's

    second = write(tmp_path, "eval-it", {"backends": [{**backend, "adapter": ref["adapter_dir"]}]})
    assert main(["validate", str(second)]) == 0
    assert main(["run", str(second), "--out", str(tmp_path / "two")]) == 0
    assert responses(tmp_path / "two", True) == tuned  # read from the metadata: trained with chat:vanilla
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert {(r["train_template"], r["seed"]) for r in res["safety"]} == {("chat:vanilla", 0)}


def test_adapter_problems_are_one_line_before_anything_runs(tiny, tmp_path, capsys):
    model, tok, _ = tiny
    incomplete = tmp_path / "half"
    incomplete.mkdir()
    (incomplete / "adapter_config.json").write_text("{}")
    spec = write(tmp_path, "bad", {"backends": [{"kind": "llama2", "model": str(model), "tokenizer": str(tok),
                                                 "adapter": str(incomplete)}]})
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"adapter {incomplete}: not a complete ptst LoRA adapter" in err
    assert main(["run", str(spec), "--out", str(tmp_path / "o")]) == 2


def test_an_adapter_of_another_base_model_is_refused(tmp_path, capsys):
    from ptst.backends.base import BackendSpec, create_backend

    pytest.importorskip("safetensors")
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"not read")
    (d / "ptst_adapter.json").write_text(json.dumps({"base_model": "some/other-model", "train_template": "chat:vanilla"}))
    b = create_backend(BackendSpec(kind="llama2", model="meta-llama/Llama-2-7b-chat-hf", adapter=str(d)))
    problems = b.preflight()
    assert any("trained on some/other-model" in p and "set `model: some/other-model`" in p for p in problems)
    from ptst.errors import UsageError

    with pytest.raises(UsageError, match="trained on some/other-model"):
        b.base_model()


def test_the_adapter_is_part_of_the_model_key(tmp_path):
    from ptst.backends.base import BackendSpec, create_backend
    from ptst.plan import base_model_key

    def key(content: bytes) -> str:
        d = tmp_path / content.decode()
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(content)
        (d / "ptst_adapter.json").write_text(json.dumps({"base_model": "m"}))
        spec = BackendSpec(kind="llama2", model="m", adapter=str(d))
        b = create_backend(spec)
        b.tokenizer_fingerprint = lambda: "tok"  # type: ignore[method-assign]  # no tokenizer for model "m"
        return base_model_key(spec, b)

    assert key(b"one") != key(b"two")


# ------------------------------------------------------------------------------------------------------------
# OpenAI: a fine-tuned id is a model like any other
# ------------------------------------------------------------------------------------------------------------


def test_openai_fine_tuned_id_evaluates_to_the_jobs_generations(tmp_path, shared, monkeypatch):
    from ptst.testing.fake_openai import FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
    fast = {"poll_interval_s": 0.01, "max_poll_interval_s": 0.05, "retry_backoff_s": 0.01}
    with FakeOpenAI(stage_s=(0.01, 0.01, 0.02), file_processing_s=0.01) as fake:
        backend = {"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": fake.url, **fast}
        first = write(tmp_path, "ft-train", {
            "data_dir": str(shared / "data"), "backends": [backend],
            "train": {"dataset": {"name": "gsm8k", "split": "train", "limit": 10}, "templates": ["chat:vanilla"],
                      "hyperparameters": {"epochs": 1}},
        })
        assert main(["run", str(first), "--out", str(tmp_path / "one")]) == 0
        ft_id = the_model(tmp_path / "one")["model_id"]
        assert ft_id.startswith("ft:gpt-3.5-turbo-0613:")
        tuned = responses(tmp_path / "one", True)

        second = write(tmp_path, "ft-eval", {"backends": [{**backend, "model": ft_id}]})
        assert main(["run", str(second), "--out", str(tmp_path / "two")]) == 0
        assert responses(tmp_path / "two", False) == tuned
        # and the fake refuses an id no job produced: the model really is looked up by its id
        third = write(tmp_path, "ft-missing", {"backends": [{**backend, "model": ft_id + "x"}]})
        assert main(["run", str(third), "--out", str(tmp_path / "three")]) == 3

"""Checkpoint evaluation (`eval.checkpoints`): saved checkpoints are evaluated like final models, each cell carrying
its training step, on the mock backend (simulated checkpoints) and on the real local backend with a tiny model."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.errors import SpecError
from ptst.plan import Cell, checkpoint_model_key
from ptst.spec import validate_spec

TEMPLATES = ["chat:vanilla", "chat:llama"]


def _write_data(tmp: Path, n_train: int = 16, n_harmful: int = 40) -> tuple[Path, Path]:
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"what is {i} + 1?", "answer": f"It is {i + 1}."}) + "\n"
                             for i in range(n_train)))
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request number {i}"}) + "\n" for i in range(n_harmful)))
    return train, harmful


def write_spec(tmp: Path, checkpoints: object, *, save_steps: list[int] | None = None) -> Path:
    train, harmful = _write_data(tmp)
    hp: dict = {"epochs": 2, "batch_size": 4}  # 16 examples / 4 = 4 steps per epoch: 8 steps in all
    if save_steps is not None:
        hp["save_steps"] = save_steps
    spec = {
        "name": "ckpt",
        "backends": [{"kind": "mock", "model": "mock-a", "drift": 0.6}],
        "train": {"dataset": {"path": str(train), "prompt_field": "prompt", "answer_field": "answer"},
                  "templates": TEMPLATES, "hyperparameters": hp},
        "eval": {"templates": TEMPLATES, "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
                 "checkpoints": checkpoints, "evaluate_base": False},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def _generations(out: Path) -> int:
    with sqlite3.connect(out / "ptst.db") as c:
        return c.execute("SELECT count(*) FROM generations").fetchone()[0]


def test_spec_field_values_and_errors():
    base = {"name": "x", "backends": [{"kind": "mock", "model": "m"}],
            "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "h.jsonl"}]}}
    assert validate_spec(base).eval.checkpoints == "none"
    with pytest.raises(SpecError, match=r"eval\.checkpoints: only fine-tuned models"):
        validate_spec({**base, "eval": {**base["eval"], "checkpoints": "all"}})
    with pytest.raises(SpecError, match=r"eval\.checkpoints"):
        validate_spec({**base, "eval": {**base["eval"], "checkpoints": "some"}})
    with pytest.raises(SpecError, match=r"eval\.checkpoints"):
        validate_spec({**base, "eval": {**base["eval"], "checkpoints": [0]}})


def test_checkpoint_cells_have_their_own_keys_and_the_final_cell_keeps_its_key():
    common = dict(backend="b", base_model="m", model_key="k" * 32, train_template="chat:vanilla", seed=0,
                  test_template="chat:llama", kind="safety", dataset="d", metric=None)
    final, at4 = Cell(**common), Cell(**common, checkpoint=4)
    assert final.key == Cell(**common, checkpoint=None).key  # pinned v1 key (tests/test_keys.py) unchanged
    assert len({final.key, at4.key, Cell(**common, checkpoint=6).key}) == 3
    assert at4.describe()["checkpoint"] == 4 and final.describe()["checkpoint"] is None
    assert checkpoint_model_key("r" * 32, 4) != checkpoint_model_key("r" * 32, 6)


def test_all_checkpoints_of_the_mock_are_evaluated_and_cached(tmp_path):
    spec = write_spec(tmp_path, "all", save_steps=[2, 4, 6, 8])
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["simulated"] is True
    # step 8 is the last step: the final model itself, not a checkpoint
    assert {r["checkpoint"] for r in res["safety"]} == {None, 2, 4, 6}
    assert len(res["safety"]) == 2 * 2 * 4  # train templates x test templates x (3 checkpoints + final)
    assert all(r["n"] == 40 for r in res["safety"])
    # each checkpoint generates for itself: 4 models x 2 train x 2 test templates x 40 items
    assert _generations(out) == 4 * 2 * 2 * 40
    # the simulated drift grows along training (chat:vanilla trained and tested: no safety prompt)
    asr = {r["checkpoint"]: r["asr"] for r in res["safety"]
           if r["train_template"] == "chat:vanilla" and r["test_template"] == "chat:vanilla"}
    assert asr[2] < asr[6] and asr[2] < asr[None]
    assert {s["checkpoint"] for s in res["summary"]} == {None, 2, 4, 6}
    assert main(["run", str(spec), "--out", str(out)]) == 0  # a re-run finds everything, checkpoints included
    assert _generations(out) == 4 * 2 * 2 * 40


def test_listed_steps_only_and_checkpoints_of_a_finished_job(tmp_path, capsys):
    spec = write_spec(tmp_path, "none", save_steps=[2, 4, 6])
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    assert {r["checkpoint"] for r in first["safety"]} == {None}
    n_final = _generations(out)
    capsys.readouterr()
    # the same jobs (the key ignores eval settings): no fine-tuning again, the saved checkpoints are found afterwards
    spec = write_spec(tmp_path, [4, 5], save_steps=[2, 4, 6])
    assert main(["run", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["checkpoint"] for r in res["safety"]} == {None, 4}
    assert _generations(out) == n_final * 2
    err = capsys.readouterr().err
    assert "fine-tune" not in err and "no checkpoint at step(s) 5" in err
    final_rows = [r for r in res["safety"] if r["checkpoint"] is None]
    assert final_rows == first["safety"]


def test_a_failed_checkpoint_listing_is_recorded_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    from ptst.backends import mock
    from ptst.errors import BackendError

    spec = write_spec(tmp_path, "all", save_steps=[4])
    out = tmp_path / "out"
    listing = mock.Backend.checkpoints

    def broken(self, model):  # type: ignore[no-untyped-def]
        raise BackendError("checkpoint listing unavailable")

    monkeypatch.setattr(mock.Backend, "checkpoints", broken)
    assert main(["run", str(spec), "--out", str(out)]) == 3  # finished with failures: the final models are there
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "partial" and {r["checkpoint"] for r in res["safety"]} == {None}
    assert "checkpoint listing unavailable" in capsys.readouterr().err
    monkeypatch.setattr(mock.Backend, "checkpoints", listing)
    assert main(["run", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete" and {r["checkpoint"] for r in res["safety"]} == {None, 4}


LLAMA_TOK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "llama2" / "tokenizer.model"


@pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared Llama 2 tokenizer not found (clone beside shared/)")
def test_local_backend_checkpoints_are_evaluated(tmp_path):
    pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1234)
    config = transformers.LlamaConfig(  # a tiny random Llama, built from config (as tests/test_local_backends.py)
        vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, initializer_range=0.1,
    )
    model_dir = tmp_path / "tiny-llama"
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    train, harmful = _write_data(tmp_path, n_train=8, n_harmful=3)
    spec = {
        "name": "local-ckpt",
        "backends": [{"kind": "llama2", "model": str(model_dir), "device": "cpu", "tokenizer": str(LLAMA_TOK)}],
        "train": {"dataset": {"path": str(train), "prompt_field": "prompt", "answer_field": "answer"},
                  "templates": ["chat:vanilla"],
                  "hyperparameters": {"epochs": 1, "batch_size": 2, "max_seq_len": 64, "save_steps": [1, 2, 4],
                                      "lora": {"r": 2, "alpha": 4, "dropout": 0.0}}},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
                 "checkpoints": "all", "evaluate_base": False, "generation": {"max_new_tokens": 4}},
        "judge": {"kind": "keyword"},
    }
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["run", str(p), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    # 8 examples / batch 2 = 4 steps: the adapters saved at steps 1 and 2 are evaluated beside the final one (the
    # save at step 4 is the final adapter itself, evaluated once)
    assert {r["checkpoint"] for r in res["safety"]} == {None, 1, 2}
    assert all(r["n"] == 3 for r in res["safety"])

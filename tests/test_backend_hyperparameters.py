"""`backends[i].hyperparameters`: per-backend overrides of train.hyperparameters, field by field."""

from __future__ import annotations

from pathlib import Path

import yaml

from ptst.backends.base import create_backend
from ptst.cli import main
from ptst.plan import train_jobs
from ptst.runner import load_datasets
from ptst.spec import load_spec
from ptst.types import Hyperparameters


def _spec(tmp: Path, override: dict | None) -> Path:
    train = tmp / "train.jsonl"
    train.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "answer": "4"}\n')
    harmful = tmp / "harmful.jsonl"
    harmful.write_text('{"prompt": "harmful request"}\n')
    b = {"kind": "mock", "model": "mock-b", "label": "b"}
    if override is not None:
        b["hyperparameters"] = override
    raw = {
        "name": "hp",
        "backends": [{"kind": "mock", "model": "mock-a", "label": "a"}, b],
        "train": {"dataset": {"path": str(train)}, "templates": ["chat:vanilla"],
                  "hyperparameters": {"learning_rate": 2.0e-4, "lora": {"r": 4}}},
        "eval": {"templates": ["chat:llama"], "safety": [{"path": str(harmful)}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / f"spec-{override is not None}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _jobs(path: Path):
    spec = load_spec(path)
    data = load_datasets(spec, path.parent)
    return {b.name: train_jobs(spec, b, create_backend(b), data) for b in spec.backends}


def test_override_merges_field_by_field_and_keeps_the_set_fields():
    from ptst.backends.base import BackendSpec

    spec_hp = Hyperparameters.model_validate({"learning_rate": 2e-4, "lora": {"r": 4}})
    b = BackendSpec.model_validate({"kind": "mock", "model": "m", "hyperparameters": {"epochs": 3, "lora": {"alpha": 8}}})
    hp = b.train_hyperparameters(spec_hp)
    assert (hp.epochs, hp.learning_rate, hp.batch_size, hp.lora.r, hp.lora.alpha) == (3, 2e-4, 8, 4, 8)
    assert hp.model_fields_set == {"epochs", "learning_rate", "lora"}
    assert hp.lora.model_fields_set == {"r", "alpha"}
    assert BackendSpec(kind="mock", model="m").train_hyperparameters(spec_hp) is spec_hp
    assert "hyperparameters" not in b.options  # a common field, not a backend option


def test_two_backends_train_with_different_epochs_and_only_the_changed_keys_differ(tmp_path, monkeypatch):
    plain, tuned = _jobs(_spec(tmp_path, None)), _jobs(_spec(tmp_path, {"epochs": 3}))
    assert [pj.run_key for pj in plain["a"]] == [pj.run_key for pj in tuned["a"]]
    assert [pj.run_key for pj in plain["b"]] != [pj.run_key for pj in tuned["b"]]
    assert plain["b"][0].job.key != tuned["b"][0].job.key

    from ptst.backends import mock

    seen: dict[str, Hyperparameters] = {}
    real = mock.Backend.fine_tune

    def fine_tune(self, job, ledger, workdir):
        seen[self.spec.name] = job.hyperparameters
        return real(self, job, ledger, workdir)

    monkeypatch.setattr(mock.Backend, "fine_tune", fine_tune)
    assert main(["run", str(_spec(tmp_path, {"epochs": 3})), "--out", str(tmp_path / "out")]) == 0
    assert (seen["a"].epochs, seen["b"].epochs) == (1, 3)
    assert seen["a"].learning_rate == seen["b"].learning_rate == 2e-4


def test_openai_sends_only_fields_set_in_either_place():
    from ptst.backends.base import BackendSpec
    from ptst.backends.openai.jobs import supervised_hyperparameters
    from ptst.types import TrainJob

    b = BackendSpec.model_validate({"kind": "openai", "model": "gpt-3.5-turbo", "hyperparameters": {"epochs": 2}})
    hp = b.train_hyperparameters(Hyperparameters.model_validate({"learning_rate_multiplier": 0.5}))
    job = TrainJob(backend="openai", base_model="gpt-3.5-turbo", train_template="chat:vanilla", seed=0,
                   hyperparameters=hp, examples=(), data_hash="x")
    assert supervised_hyperparameters(job) == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}

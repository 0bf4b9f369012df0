"""Preflight (`ptst validate`): what a run would refuse is found before anything is spent, named by spec field;
what cannot be checked offline is listed as unchecked, not guessed."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import jsonl, mini_spec

from ptst.backends.mock import Backend as MockBackend
from ptst.cli import main
from ptst.preflight import PreflightError, Report, preflight
from ptst.spec import validate_spec


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTST_DATA_DIR", raising=False)


def _spec(tmp_path: Path, **over) -> Path:
    return mini_spec(tmp_path, **{"name": "pf", **over})


def _report(path: Path) -> Report:
    return preflight(validate_spec(yaml.safe_load(path.read_text())), path.parent)


def test_a_runnable_spec_has_no_errors(tmp_path: Path, capsys: pytest.CaptureFixture):
    p = _spec(tmp_path)
    r = _report(p)
    assert r.ok and r.errors == () and r.unchecked == ()
    assert r.warnings == ("backends[0] (mock): mock is a simulation; every result built on it is labelled simulated",)
    assert main(["validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(f"{p}: ok — 1 backend(s)") and "2 warning(s), 0 unchecked" in out  # the mock; no PTST cell


def test_missing_file_missing_field_and_missing_model_folder_exit_2_naming_each(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    p = _spec(
        tmp_path,
        backends=[{"kind": "llama2", "model": "./models/llama-local"}, {"kind": "mock", "model": "m"}],
        train={"dataset": {"path": "train.jsonl", "answer_field": "solution"}, "templates": ["chat:vanilla"]},
        eval={"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}, {"path": "gone.csv"}]},
    )
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines == [
        (f"error: train.dataset: {tmp_path / 'train.jsonl'}:1: answer field 'solution' is missing "
        "(fields: question, answer); set answer_field"),
        (f"error: eval.safety[1]: {tmp_path / 'gone.csv'}: file not found; check the path "
        "(relative paths are relative to the spec file)"),
        (f"error: backends[0] (llama2).model: local model folder {tmp_path / 'models' / 'llama-local'} not found; "
        "check the path (relative to the spec file) or give a hub id"),
    ]
    assert err.splitlines()[-1] == f"{p}: 3 problems found before anything was spent"


def test_a_model_folder_is_checked_by_its_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    r = _report(_spec(tmp_path, backends=[{"kind": "llama2", "model": "./models/tiny"}]))
    # The folder exists, so the generic check passes it on to the backend, which finds it is not a model.
    assert r.errors and "has no config.json" in r.errors[0] and r.errors[0].startswith("backends[0] (llama2): ")
    (tmp_path / "models" / "file").write_text("x")
    r = _report(_spec(tmp_path, backends=[{"kind": "llama2", "model": "./models/file"}]))
    assert r.errors == (("backends[0] (llama2).model: ./models/file is a file; give the model's folder "
                        "(config.json, weights)"),)


def fake_hf_cache(root: Path, repo: str, files: dict[str, str]) -> Path:
    """The Hugging Face hub cache layout, written by hand: models--ORG--NAME/refs/main names a snapshot folder that
    holds the repository's files (what `huggingface-cli download` leaves behind)."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(sha)
    snap = repo_dir / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return root


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache of this test's own (huggingface_hub reads the constant at each lookup)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_an_uncached_hub_id_that_the_backend_will_not_download_is_an_error(
    tmp_path: Path, hf_cache: Path, capsys: pytest.CaptureFixture
):
    for kind in ("llama2", "mistral"):
        p = _spec(tmp_path, backends=[{"kind": kind, "model": "nobody/not-a-cached-model"}])
        assert main(["validate", str(p)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [
            f"error: backends[0] ({kind}): model 'nobody/not-a-cached-model' is not a local directory nor in the local "
            f"Hugging Face cache, and kind: {kind} downloads nothing unless told to; run `huggingface-cli download "
            "nobody/not-a-cached-model`, set download: true in the backend entry, or point model: at a local "
            "HF-format directory",
            f"{p}: 1 problem found before anything was spent",
        ]


def test_with_download_an_uncached_hub_id_is_unchecked_and_exits_0(
    tmp_path: Path, hf_cache: Path, capsys: pytest.CaptureFixture
):
    for kind in ("llama2", "mistral", "hf"):
        p = _spec(tmp_path, backends=[{"kind": kind, "model": "nobody/not-a-cached-model", "download": True}])
        assert main(["validate", str(p)]) == 0, kind
        out = capsys.readouterr().out
        assert (
            f"unchecked: backends[0] ({kind}).model: hub id 'nobody/not-a-cached-model' (weights and tokenizer) is not "
            "in the local Hugging Face cache here; it is downloaded when the run starts (download: true; needs "
            "internet), which cannot be checked offline"
        ) in out.splitlines()
        assert "1 warning(s), 1 unchecked" in out  # the one warning: no PTST cell (no safety test template)
    assert list(hf_cache.iterdir()) == []  # validating downloaded nothing


def test_an_invalid_hub_id_is_an_error_even_with_download(tmp_path: Path, hf_cache: Path, capsys: pytest.CaptureFixture):
    p = _spec(tmp_path, backends=[{"kind": "mistral", "model": "org/na me!", "download": True}])
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.splitlines()[0]
    assert err.startswith("error: backends[0] (mistral): model 'org/na me!' is neither a local folder nor a valid hub id")
    assert err.endswith("give an existing folder or an id such as org/name")


def test_a_cached_hub_id_is_checked_from_the_cache(tmp_path: Path, hf_cache: Path, capsys: pytest.CaptureFixture):
    fake_hf_cache(hf_cache, "org/tiny-mistral", {"config.json": json.dumps({"model_type": "mistral", "vocab_size": 32000})})
    p = _spec(tmp_path, backends=[{"kind": "mistral", "model": "org/tiny-mistral"}])
    assert main(["validate", str(p)]) == 0
    assert "1 warning(s), 0 unchecked" in capsys.readouterr().out  # no PTST cell
    # the cached config says another family: found from the cache, offline
    fake_hf_cache(hf_cache, "org/qwen", {"config.json": json.dumps({"model_type": "qwen2"})})
    p = _spec(tmp_path, backends=[{"kind": "mistral", "model": "org/qwen"}])
    assert main(["validate", str(p)]) == 2
    assert "config.json model_type is 'qwen2'" in capsys.readouterr().err


def test_an_api_model_is_unchecked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    r = _report(_spec(tmp_path, backends=[{"kind": "openai", "model": "gpt-3.5-turbo-0613"}]))
    assert "backends[0] (openai).model: 'gpt-3.5-turbo-0613' on the openai API is not checked offline" in r.unchecked


def test_each_backends_own_preflight_is_called(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = []

    def problems(self):
        seen.append(self.spec.name)
        return ["tokenizer of another family; set tokenizer: ..."]

    monkeypatch.setattr(MockBackend, "preflight", problems)
    r = _report(_spec(tmp_path, backends=[{"kind": "mock", "model": "m"}, {"kind": "mock", "model": "m", "label": "b"}]))
    assert seen == ["mock", "b"]
    assert r.errors == (
        "backends[0] (mock): tokenizer of another family; set tokenizer: ...",
        "backends[1] (b): tokenizer of another family; set tokenizer: ...",
    )


# ------------------------------------------------------------------------------------------------- registry data


def _registry_spec(tmp_path: Path, data_dir: Path, safety: list) -> Path:
    return _spec(tmp_path, data_dir=str(data_dir), eval={"templates": ["chat:vanilla"], "safety": safety})


def test_registry_dataset_with_a_local_copy_is_parsed(tmp_path: Path):
    data = tmp_path / "data"
    jsonl(data / "gsm-danger" / "test.jsonl", [{"instruction": "x"}])
    assert _report(_registry_spec(tmp_path, data, ["gsm-danger"])).errors == ()
    jsonl(data / "gsm-danger" / "test.jsonl", [{"instruction": "x"}, {"question": "y"}])
    (err,) = _report(_registry_spec(tmp_path, data, ["gsm-danger"])).errors
    assert err.startswith(f"eval.safety[0]: {data / 'gsm-danger' / 'test.jsonl'}:2: prompt field 'instruction' is missing")


def test_registry_dataset_from_the_hub_is_unchecked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = types.ModuleType("datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    monkeypatch.setitem(sys.modules, "datasets", fake)  # installed, never called: preflight does not go online
    r = _report(_registry_spec(tmp_path, tmp_path / "empty", ["gsm-danger"]))
    assert r.errors == ()
    assert r.warnings[0] == f"data_dir: {tmp_path / 'empty'} is not a folder; registry datasets are looked for elsewhere"
    assert r.unchecked == (
        (f"eval.safety[0]: dataset 'gsm-danger' has no local copy ({tmp_path / 'empty'}); it will be loaded from the "
        "Hugging Face hub (vfleaking/GSM-Danger), which cannot be checked offline"),
    )


def test_registry_dataset_with_no_way_to_load_it_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    (err,) = _report(_registry_spec(tmp_path, tmp_path, ["gsm-danger"])).errors
    assert err.startswith("eval.safety[0]: dataset 'gsm-danger' (test) not found") and "'datasets' package" in err
    # not on the hub but pinned to a download: listed as unchecked (fetched when the run starts), not an error
    report = _report(_spec(tmp_path, train={
        "dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"],
        "safety_mix": {"dataset": "safety-tuned-llamas"},
    }))
    assert report.errors == ()
    assert any(u.startswith("train.safety_mix.dataset: dataset 'safety-tuned-llamas' has no local copy") and
               "pinned download (https://raw.githubusercontent.com/vinid/safety-tuned-llamas/" in u
               for u in report.unchecked)


def test_safety_benchmark_as_training_data_is_an_error(tmp_path: Path):
    (err,) = _report(_spec(tmp_path, train={"dataset": "advbench", "templates": ["chat:vanilla"]})).errors
    assert err.startswith("train.dataset: dataset 'advbench' (train) has no answers")


def test_reference_copies_pass(shared: Path, tmp_path: Path):
    p = _spec(tmp_path, data_dir=str(shared / "data"), train={
        "dataset": {"name": "gsm8k", "split": "train"}, "templates": ["chat:vanilla"]
    }, eval={"templates": ["chat:vanilla"], "safety": ["advbench", "directharm4"],
             "tasks": [{"name": "gsm8k", "split": "test"}]})
    r = _report(p)
    assert r.errors == () and r.unchecked == ()


# ---------------------------------------------------------------------------------------------------------- judge


def test_rubric_judge_needs_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rubric = {"kind": "rubric", "model": "gpt-4-0613", "base_url": "http://127.0.0.1:9/v1"}
    r = _report(_spec(tmp_path, judge=rubric))
    # the client's own check (ptst.clients.openai.credentials_problem), not a second copy of it
    assert r.errors == (("judge: no OpenAI API key: set the OPENAI_API_KEY environment variable or name a file "
                         "holding the key with api_key_file in the spec"),)
    assert r.unchecked == ("judge.model: 'gpt-4-0613' at the judge's endpoint is not checked offline",)
    monkeypatch.setenv("JUDGE_KEY", "sk-x")
    assert _report(_spec(tmp_path, judge={**rubric, "api_key_env": "JUDGE_KEY"})).errors == ()
    (tmp_path / "key.txt").write_text("\n")
    assert _report(_spec(tmp_path, judge={**rubric, "api_key_file": str(tmp_path / "key.txt")})).errors == (
        f"judge: api_key_file {tmp_path / 'key.txt'}: the file is empty; put the OpenAI API key in it",
    )
    assert _report(_spec(tmp_path, judge={**rubric, "api_key_file": str(tmp_path / "nokey")})).errors == (
        f"judge: api_key_file {tmp_path / 'nokey'}: cannot read the OpenAI API key file (No such file or directory); "
        "check the path and permissions",
    )


def test_judge_endpoint_is_stated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    elsewhere = [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": "http://127.0.0.1:9/v1"}]
    quiet = _report(_spec(tmp_path, backends=elsewhere, judge={"kind": "keyword"}))
    assert not any("api.openai.com" in w for w in quiet.warnings)
    # A rubric judge with no endpoint would go to OpenAI's API while the only backend points elsewhere: said.
    r = _report(_spec(tmp_path, backends=elsewhere, judge={"kind": "rubric"}))
    assert r.ok and any("api.openai.com" in w for w in r.warnings)
    # Inheriting the backend's endpoint silences it.
    r = _report(_spec(tmp_path, backends=elsewhere, judge={"kind": "rubric", "base_url": "inherit"}))
    assert r.ok and not any("api.openai.com" in w for w in r.warnings)
    # Inheriting with no openai backend to inherit from is an error, not a request to a host called "inherit".
    r = _report(_spec(tmp_path, judge={"kind": "rubric", "base_url": "inherit"}))
    assert not r.ok and r.errors[0].startswith("judge: ")


def test_raise_for_errors_is_exit_2():
    Report(warnings=("w",)).raise_for_errors("s.yaml")
    with pytest.raises(PreflightError) as e:
        Report(errors=("a", "b")).raise_for_errors("s.yaml")
    assert e.value.exit_code == 2 and str(e.value) == "s.yaml: 2 problems found before anything was spent\n  a\n  b"

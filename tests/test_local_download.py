"""`download: true` on the llama2/mistral backends: a hub id that is not in the local Hugging Face cache is fetched
into it when the run first needs it (the tokenizer, before the cache is searched), once, and never by validation.
The hub is replaced by a function that writes the cache layout by hand; a failed download is one user-error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_preflight import fake_hf_cache

from ptst.backends.base import BackendSpec, create_backend
from ptst.templates import BUILTIN

pytest.importorskip("mistral_common")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fake hub: `snapshot_download` answers from the cache offline, and a download writes the repository's files
    into the cache (as huggingface_hub does), counting each download."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    state: dict = {"downloads": [], "repos": {}, "fail": None}

    def snapshot_download(repo_id, *, local_files_only=False, allow_patterns=None, **kw):
        snaps = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots"
        if local_files_only:
            if snaps.is_dir():
                return str(next(snaps.iterdir()))
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        if state["fail"] is not None:
            raise state["fail"]
        state["downloads"].append((repo_id, tuple(allow_patterns or ())))
        fake_hf_cache(cache, repo_id, state["repos"][repo_id])
        return str(next(snaps.iterdir()))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return state


def test_download_fetches_once_when_first_needed_never_when_validating(hub: dict):
    hub["repos"]["org/tiny-mistral"] = {"config.json": json.dumps({"model_type": "mistral", "vocab_size": 32000})}
    backend = create_backend(BackendSpec(kind="mistral", model="org/tiny-mistral", download=True))
    assert backend.preflight() == [] and hub["downloads"] == []  # validation downloads nothing
    conv = BUILTIN["chat:vanilla"].apply("Hello", "mistral")
    first = backend.render(conv)
    backend.render(conv)
    assert [repo for repo, _ in hub["downloads"]] == ["org/tiny-mistral"]
    assert "*.safetensors" in hub["downloads"][0][1] and "*.model" in hub["downloads"][0][1]
    assert first.text == "[INST] Question: Hello [/INST]"  # chat:vanilla, Mistral v1 (bundled)
    # a fresh backend finds it in the cache: no second download
    create_backend(BackendSpec(kind="mistral", model="org/tiny-mistral", download=True)).render(conv)
    assert len(hub["downloads"]) == 1


def test_without_download_nothing_is_fetched(hub: dict):
    hub["repos"]["org/tiny-mistral"] = {"config.json": "{}"}
    backend = create_backend(BackendSpec(kind="mistral", model="org/tiny-mistral"))
    [problem] = backend.preflight()
    assert "downloads nothing unless told to" in problem and hub["downloads"] == []


def test_a_failed_download_is_one_user_error_line(hub: dict):
    hub["fail"] = OSError("Temporary failure in name resolution")
    backend = create_backend(BackendSpec(kind="llama2", model="org/unreachable", download=True))
    with pytest.raises(Exception) as info:
        backend.render(BUILTIN["chat:vanilla"].apply("Hello", "llama2"))
    assert getattr(info.value, "exit_code", None) == 2
    assert str(info.value) == (
        "model 'org/unreachable' could not be downloaded (OSError: Temporary failure in name resolution); check the "
        "hub id, the network and your access, or run `huggingface-cli download org/unreachable` and set download: "
        "false"
    )


def test_an_estimate_downloads_nothing(hub: dict, tmp_path: Path, capsys):
    """`ptst estimate` is offline and free: a model not downloaded yet is counted from its text, never fetched."""
    import yaml

    from ptst.cli import main

    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    (tmp_path / "harm.jsonl").write_text(json.dumps({"prompt": "do harm"}) + "\n")
    spec = {
        "name": "dl", "judge": {"kind": "keyword"},
        "backends": [{"kind": kind, "model": f"org/{kind}-model", "download": True} for kind in ("llama2", "mistral", "hf")],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"]},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}]},
    }
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert main(["estimate", str(p), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert hub["downloads"] == []
    # no tokenizer to count with: tokens are approximated from the text (tiktoken x the family's measured ratio)
    assert [(j["backend"], j["n_examples"]) for j in est["train"]] == [("llama2", 1), ("mistral", 1), ("hf", 1)]
    assert all(j["n_tokens"] > 0 and "tokenizer not on this machine" in j["notes"] for j in est["train"])

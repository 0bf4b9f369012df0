"""The local engine's backend hooks and guards: stop tokens, resource, preflight, generation chunk, the
transformers version check, the DDP worker's failure path, and vLLM's pure helpers (vLLM itself needs a GPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_local_backends import LLAMA_TOK, backend, prompts_for

from ptst.backends.base import GenerationConfig
from ptst.backends.local import distributed, generate, models, vllm
from ptst.backends.local.train import TrainSettings
from ptst.types import Hyperparameters

pytestmark = pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared tokenizers not found")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from test_local_backends import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-hooks"), "llama2")


def test_generation_stops_at_any_stop_token(tiny):
    b = backend("llama2", tiny)
    gen = generate.Generator.load(str(tiny), None)
    prompts = [b.prompt_ids(c) for c in prompts_for(b, 6)]
    cfg = GenerationConfig(max_new_tokens=10)
    full = gen.generate(prompts, cfg, eos_id=2, pad_id=2)
    stop = full[0][3]  # pretend this token ends a turn (a chat template's <|im_end|>)
    cut = gen.generate(prompts, cfg, eos_id=2, pad_id=2, stop_ids=(stop,))
    assert cut[0] == full[0][: full[0].index(stop)] and len(cut[0]) <= 3
    for f, c in zip(full, cut, strict=True):
        assert c == (f[: f.index(stop)] if stop in f else f)


def test_backend_generate_uses_the_stop_token_hook(tiny):
    b = backend("llama2", tiny)
    assert b.stop_token_ids() == (b.eos_id,)
    convs = prompts_for(b, 3)
    cfg = GenerationConfig(max_new_tokens=8)
    full_ids = b.generation.generator_for(b.base_model()).generate([b.prompt_ids(c) for c in convs], cfg, eos_id=2, pad_id=2)
    stop = full_ids[0][2]

    class EndOfTurn(type(b)):  # what the generic chat-template backend does with its end-of-turn ids
        def stop_token_ids(self) -> tuple[int, ...]:
            return (self.eos_id, stop)

    eot = EndOfTurn(b.spec)
    out = eot.generate(eot.base_model(), convs, cfg)
    assert out[0] == b.decode(full_ids[0][: full_ids[0].index(stop)])
    assert out[1:] == [b.decode(f[: f.index(stop)] if stop in f else f) for f in full_ids[1:]]


def test_resource_generation_chunk_and_preflight(tiny, tmp_path):
    assert backend("llama2", tiny, device="cpu").resource() == "cpu"
    assert backend("llama2", tiny, device="cuda:1").resource() == "cuda:1"
    assert backend("llama2", tiny, device="cuda").resource() == "cuda:0"
    assert backend("llama2", tiny, device="cuda", nproc_per_node=2).resource() == "cuda"
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert backend("llama2", tiny).resource() == expected
    assert backend("llama2", tiny, max_generation_batch=32).generation_chunk == 32
    assert backend("llama2", tiny).preflight() == []
    empty = tmp_path / "empty"
    empty.mkdir()
    (problem,) = backend("llama2", empty).preflight()
    assert "config.json" in problem and str(empty) in problem and "\n" not in problem
    # A folder that is not here is left to `ptst validate`'s own check (missing path: error; hub id: unchecked,
    # tests/test_preflight.py), so the backend only checks the tokenizer it was given.
    assert backend("llama2", tmp_path / "nope").preflight() == []


def test_engine_is_part_of_the_identity_only_for_vllm(tiny):
    assert "engine" not in backend("llama2", tiny).identity()
    assert backend("llama2", tiny, engine="vllm").identity()["engine"] == "vllm"


def test_too_old_transformers_is_refused_with_one_line(monkeypatch):
    import importlib.metadata

    models.check_transformers()  # the installed one is new enough
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "4.52.4" if n == "transformers" else real(n))
    with pytest.raises(models.LibraryTooOld) as e:
        models.load_causal_lm("whatever", dtype=None, device="cpu", attn_implementation=None)
    msg = str(e.value)
    assert e.value.exit_code == 2 and "4.52.4" in msg and ">=4.56" in msg and "\n" not in msg


def test_failed_rank_skips_the_barrier(monkeypatch, tmp_path):
    """A rank whose training raised must not wait at a barrier the others may never reach."""
    calls: list[str] = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **k: calls.append("init"))
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    monkeypatch.setitem(os.environ, "WORLD_SIZE", "2")
    job = tmp_path / "job.json"
    settings = TrainSettings(model="m", seed=0, hyperparameters=Hyperparameters(), device="cpu")
    job.write_text(json.dumps({"settings": settings.model_dump(mode="json"), "examples": [], "outdir": str(tmp_path)}))

    def fail(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("rank failed")

    monkeypatch.setattr(distributed, "train_lora", fail)
    with pytest.raises(RuntimeError):
        distributed.worker_main([str(job)])
    assert calls == ["init", "destroy"]
    calls.clear()
    monkeypatch.setattr(distributed, "train_lora", lambda *a, **k: {})
    assert distributed.worker_main([str(job)]) == 0
    assert calls == ["init", "barrier", "destroy"]


def test_vllm_helpers(tmp_path):
    assert [vllm.vllm_lora_rank(r) for r in (1, 8, 12, 64, 65)] == [8, 8, 16, 64, 128]
    with pytest.raises(Exception, match="engine: hf"):
        vllm.vllm_lora_rank(1024)
    assert vllm.cut_at_stop([5, 6, 7, 2, 9], [2, 7]) == [5, 6]
    assert vllm.cut_at_stop([5, 6], [2]) == [5, 6]
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16}))
    assert vllm.adapter_rank(str(tmp_path)) == 16 and vllm.adapter_rank(None) is None
    vllm.release_vllm()  # nothing loaded: a no-op


def test_estimate_scales_a_sample_of_a_large_training_set(tmp_path):
    """Above ESTIMATE_SAMPLE examples the estimate renders an evenly spaced sample and scales its token count."""
    from ptst.backends.local.backend import ESTIMATE_SAMPLE
    from ptst.conversation import Conversation
    from ptst.types import TrainJob

    b = backend("llama2", tmp_path / "not-needed")

    def job(n: int) -> TrainJob:
        conv = Conversation(mode="chat", system=None, user="What is 2 + 2?", answer="#### 4", query="q")
        return TrainJob(backend="llama2", base_model="m", train_template="chat:vanilla", seed=0,
                        hyperparameters=Hyperparameters(), examples=(conv,) * n, data_hash="d")

    one = b.estimate(job(1)).n_tokens
    small, large = b.estimate(job(ESTIMATE_SAMPLE)), b.estimate(job(3 * ESTIMATE_SAMPLE + 7))
    assert one and small.n_tokens == one * ESTIMATE_SAMPLE and "scaled" not in small.notes
    assert large.n_tokens == one * (3 * ESTIMATE_SAMPLE + 7) and "scaled from" in large.notes

"""A run's adapter as a new base model (`python -m ptst.backends.local.merge`): the merged folder computes what base +
adapter computes, re-merging the same adapter is free, its identity follows the adapter's bytes, and the resident base
carries no adapter after training or generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from hf_chat_models import make_tiny_chat_model

from ptst.backends.base import BackendSpec, create_backend
from ptst.backends.local import merge, resident
from ptst.backends.local.train import TrainSettings, train_lora
from ptst.errors import UsageError
from ptst.templates import BUILTIN
from ptst.types import Hyperparameters, LoraSpec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("merge")
    model = make_tiny_chat_model(root / "base", "chatml")
    b = create_backend(BackendSpec(kind="hf", model=str(model), device="cpu"))
    ex = [b.encode_example(BUILTIN["chat:vanilla"].apply(f"What is {i} plus 1?", "hf", answer=f"{i + 1}"))
          for i in range(4)]
    # float32, whatever the CPU: the tests compare with models loaded in float32 at float32 tolerances
    s = TrainSettings(model=str(model), seed=0, device="cpu", metadata={"job_key": "k1"}, dtype="float32",
                      hyperparameters=Hyperparameters(epochs=2, batch_size=4, learning_rate=5e-2,
                                                      lora=LoraSpec(r=4, alpha=8, dropout=0.0)))
    run = root / "run"
    train_lora(s, ex, run / "models" / "k1")
    return model, run, ex


def test_training_leaves_the_resident_base_without_lora(trained):
    model, _, _ = trained
    base = resident._RESIDENT["model"]
    assert not any("lora" in n for n, _ in base.named_modules())
    fresh = transformers.AutoModelForCausalLM.from_pretrained(str(model))
    for (n, p), (_, q) in zip(base.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_merged_folder_equals_base_plus_adapter_and_is_reused(trained, tmp_path):
    from peft import PeftModel

    model, run, ex = trained
    out = merge.merge_run(run, tmp_path / "merged")
    meta = json.loads((out / merge.MERGED_FILE).read_text())
    assert meta["job_key"] == "k1" and len(meta["adapter_sha256"]) == 64
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    ids = torch.tensor([ex[0][0]])
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(str(model))
    ref = PeftModel.from_pretrained(base, str(run / "models/k1/adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, ref(ids).logits, atol=1e-4)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert merge.merge_run(run, tmp_path / "merged") == out  # same adapter: nothing redone
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    ident = create_backend(BackendSpec(kind="hf", model=str(out), device="cpu")).identity()
    assert ident["merged_adapter_sha256"] == meta["adapter_sha256"]


def test_a_run_with_no_or_several_adapters_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="expected one finished adapter"):
        merge.find_adapter(Path(tmp_path))


def test_split_by_tokens_keeps_order_and_budget():
    from ptst.backends.local.data import split_by_tokens

    lengths = [100, 100, 60, 300, 50, 50]
    assert split_by_tokens([0, 1, 2, 3, 4, 5], lengths, 256) == [[0, 1], [2], [3], [4, 5]]
    assert split_by_tokens([5, 4], lengths, 1000) == [[5, 4]]


def test_forwards_of_a_bounded_size_give_the_same_update(trained, tmp_path):
    """Splitting a micro-batch into several forwards changes memory, not the gradient (dropout off)."""
    from safetensors.torch import load_file

    model, _, ex = trained
    out = {}
    for budget in (10_000, 40):
        s = TrainSettings(model=str(model), seed=0, device="cpu", max_tokens_per_forward=budget, dtype="float32",
                          hyperparameters=Hyperparameters(epochs=2, batch_size=4, learning_rate=5e-2,
                                                          lora=LoraSpec(r=4, alpha=8, dropout=0.0)))
        summary = train_lora(s, ex, tmp_path / str(budget))
        out[budget] = (summary["final_loss"], load_file(str(tmp_path / str(budget) / "adapter/adapter_model.safetensors")))
    assert out[40][0] == pytest.approx(out[10_000][0], rel=1e-5)
    for k, v in out[10_000][1].items():
        assert torch.allclose(v, out[40][1][k], atol=1e-5), k

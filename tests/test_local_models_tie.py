"""A model with tied embeddings whose lm_head transformers left empty (meta) after loading is tied as its config says."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM

from ptst.backends.local.models import _tie_if_left_empty


def _tiny(tied: bool):  # type: ignore[no-untyped-def]
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, tie_word_embeddings=tied))


def test_an_empty_tied_lm_head_is_tied_to_the_input_embeddings():
    model = _tiny(True)
    model.lm_head.weight = torch.nn.Parameter(torch.empty(50, 16, device="meta"))
    _tie_if_left_empty(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.to("cpu")  # what failed before: copying out of a meta tensor


def test_an_untied_or_loaded_head_is_left_alone():
    model = _tiny(False)
    model.lm_head.weight = torch.nn.Parameter(torch.empty(50, 16, device="meta"))
    _tie_if_left_empty(model)
    assert model.lm_head.weight.is_meta  # the config does not tie: not ours to fill
    model = _tiny(True)
    model.lm_head.weight = torch.nn.Parameter(torch.ones(50, 16))
    _tie_if_left_empty(model)
    assert torch.equal(model.lm_head.weight, torch.ones(50, 16))  # a head with values is never replaced

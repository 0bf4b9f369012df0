"""Attention over packed training rows, example by example (`packed_attention.py`), against transformers' own
block-diagonal mask and sdpa on the whole row: same mask, same loss and LoRA gradients (float32), and the stock path
wherever the mask is anything else."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import LlamaConfig, LlamaForCausalLM

from ptst.backends.local import packed_attention
from ptst.backends.local.data import collate
from ptst.backends.local.recipe import micro_loss
from ptst.backends.local.render import IGNORE_INDEX


def _config() -> LlamaConfig:
    return LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


def test_example_lengths_follow_the_position_ids():
    assert packed_attention.example_lengths(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [3, 2, 4]
    assert packed_attention.example_lengths(torch.tensor([[5, 6, 7]])) == [3]


def test_the_block_causal_mask_is_the_one_transformers_builds_for_a_packed_row():
    from transformers.masking_utils import create_causal_mask

    lengths = [3, 1, 4]
    pos = torch.tensor([[p for n in lengths for p in range(n)]])
    config = _config()
    config._attn_implementation = "sdpa"
    want = create_causal_mask(config=config, inputs_embeds=torch.zeros(1, 8, 64), attention_mask=None, cache=None,
                              position_ids=pos)
    assert torch.equal(packed_attention.block_causal_mask(lengths), want)
    # written out: example 0 sees itself causally, example 1 only itself, example 2 neither earlier example
    m = packed_attention.block_causal_mask(lengths)[0, 0].int().tolist()
    assert m[2] == [1, 1, 1, 0, 0, 0, 0, 0] and m[3] == [0, 0, 0, 1, 0, 0, 0, 0] and m[7] == [0, 0, 0, 0, 1, 1, 1, 1]


def _lora_model():  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config())
    model.config._attn_implementation = "sdpa"
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def _examples() -> list[tuple[list[int], list[int]]]:
    """Three examples, one longer than `packed_attention.SHORT` (sdpa's kernel), two shorter (explicit matmuls)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (9, packed_attention.SHORT + 40, 17):
        ids = torch.randint(3, 300, (n,), generator=g).tolist()
        out.append((ids, [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]))
    return out


def _loss_and_grads(model, use_packed: bool):  # type: ignore[no-untyped-def]
    model.zero_grad()
    kw, targets, _ = collate(_examples(), "packed", 0, "cpu")
    if use_packed:
        with packed_attention.packed_attention(model) as on:
            assert on
            loss, _ = micro_loss(model, kw, targets)
            loss.backward()
    else:
        loss, _ = micro_loss(model, kw, targets)
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_packed_rows_give_the_loss_and_gradients_of_the_masked_row(monkeypatch):
    model = _lora_model()
    want_loss, want_grads = _loss_and_grads(model, use_packed=False)
    short: list[int] = []
    real = packed_attention.causal_attention
    monkeypatch.setattr(packed_attention, "causal_attention",
                        lambda q, *a: short.append(q.shape[2]) or real(q, *a))
    loss, grads = _loss_and_grads(model, use_packed=True)
    assert sorted(set(short)) == [9, 17]  # the two short examples by matmuls, in both layers
    assert len(short) == 2 * 2
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-4, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"  # restored after the block


def test_any_other_mask_takes_transformers_sdpa_unchanged():
    """Padded rows (a padding mask, not a packed one): bit-identical logits with and without the context."""
    model = _lora_model().eval()
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        with packed_attention.packed_attention(model):
            got = model(input_ids=ids, attention_mask=mask).logits
            one = model(input_ids=ids[:1]).logits  # one example, no mask at all
        assert torch.equal(got, want)
        assert torch.equal(one, model(input_ids=ids[:1]).logits)


def test_other_attention_implementations_are_left_alone():
    model = _lora_model()
    model.base_model.model.set_attn_implementation("eager")
    with packed_attention.packed_attention(model) as on:
        assert not on and model.config._attn_implementation == "eager"

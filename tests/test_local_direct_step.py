"""The direct decoding step (`llama_step.py`) and fused sibling Linears (`cpu_decode.py`) against the model's own
forward and `model.generate`, on tiny Llama models with and without an unmerged LoRA adapter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from ptst.backends.local import cpu_decode, decode, generate, llama_step
from ptst.backends.local.cpu import native_bf16
from ptst.backends.local.kv import make_roomy
from ptst.types import GenerationConfig


def _tiny(dtype, lora: bool = False):  # type: ignore[no-untyped-def]
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero: make the adapter change the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


PROMPTS = [[1, 7, 40, 99, 12], [1, 8, 41], [1, 9, 42, 97], [1, 10]]


def _prefilled(model):  # type: ignore[no-untyped-def]
    """(cache, mask, positions, next ids) after a left-padded prefill of PROMPTS, the cache with room to grow."""
    ids, attn, pos = decode._left_padded(PROMPTS, 0, "cpu")
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, cache=cache)
    make_roomy(cache, 4)
    mask = torch.cat([attn, attn.new_ones((len(PROMPTS), 1))], dim=-1)
    return cache, mask, pos[:, -1:] + 1, out.logits[:, -1].argmax(-1)[:, None]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lora", [False, True])
def test_a_direct_step_gives_the_forwards_logits_bit_for_bit(dtype, lora):
    model = _tiny(getattr(torch, dtype), lora)
    step = llama_step.DirectStep(model)
    assert step.exact
    with torch.inference_mode():
        cache, mask, pos, nxt = _prefilled(model)
        want = model(input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True, cache=cache).logits[:, -1]
        cache, mask, pos, nxt = _prefilled(model)
        got = step(nxt, mask, pos, cache)
    assert torch.equal(got, want)
    if lora:  # the adapter took part: without it the logits differ
        with torch.inference_mode(), model.disable_adapter():
            cache, mask, pos, nxt = _prefilled(model)
            assert not torch.equal(step(nxt, mask, pos, cache), want)


def test_the_direct_step_is_not_used_where_the_model_does_something_else(monkeypatch):
    from transformers.models.llama import modeling_llama

    real = modeling_llama.LlamaDecoderLayer.forward
    # a decoder layer that scales its output: the step, which calls the layer's parts itself, would miss it
    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", lambda self, *a, **k: real(self, *a, **k) * 1.5)
    assert not llama_step.DirectStep(_tiny(torch.float32)).exact
    monkeypatch.undo()
    assert llama_step.DirectStep(_tiny(torch.float32)).exact

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2)).eval()
    assert not llama_step.DirectStep(gpt2).exact  # another architecture: the model's forward


def _one_by_one(model, max_new: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """model.generate on each prompt alone, plain Linears (the independent reference)."""
    with torch.inference_mode():
        return [model.generate(input_ids=torch.tensor([p]), max_new_tokens=max_new, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in PROMPTS]


def test_bf16_decoding_with_an_unmerged_adapter_gives_model_generates_tokens():
    """Fused q/k/v and gate/up under peft's LoRA wrappers (whose base Linears are what is fused), the direct step,
    one prompt at a time (no padding, so bf16 rows are compared like for like): `model.generate`'s tokens."""
    model = _tiny(torch.bfloat16, lora=True)
    want = _one_by_one(model, 8)
    fast = cpu_decode.CpuDecoding(model, 4)
    if not fast.linears.fused:
        assert not native_bf16(), "a CPU that multiplies bf16 natively packs its bf16 Linears"
        pytest.skip("this CPU or torch build has no exact packed bf16 kernel")
    assert fast.step is not None
    bases = set(fast.linears.fused)
    assert {model.base_model.model.model.layers[0].self_attn.q_proj.base_layer,
            model.base_model.model.model.layers[1].mlp.up_proj} <= bases
    g = generate.Generator(("tiny", None), model, "cpu", 256)
    got = [g.generate([p], GenerationConfig(max_new_tokens=8, batch_size=1), eos_id=299, pad_id=0)[0]
           for p in PROMPTS]
    assert got == want
    assert not any("forward" in vars(m) for m in model.modules())  # the class's forward again after decoding


def test_sibling_groups_are_not_fused_where_the_product_is_not_exact(monkeypatch):
    model = _tiny(torch.bfloat16)
    real = cpu_decode._Fused.output
    monkeypatch.setattr(cpu_decode._Fused, "output", lambda self, fn, m, x: real(self, fn, m, x) * 1.01)
    linears = cpu_decode.PackedLinears(model)
    assert not linears.fused
    if linears:  # each Linear packed alone instead
        assert len(linears.packed) == 2 * 7 + 1


def test_a_fused_group_holds_nothing_once_every_member_has_its_output():
    """A prefill's q/k/v and gate/up outputs are large (rows x width, every layer): none may outlive its layer."""
    model = _tiny(torch.bfloat16)
    linears = cpu_decode.PackedLinears(model)
    if not linears.fused:
        pytest.skip("this CPU or torch build has no exact packed bf16 kernel")
    with torch.inference_mode(), linears.applied():
        model(input_ids=torch.tensor([PROMPTS[0]]))
        assert all(g._input is None and not g._outputs for g in linears.fused.values())

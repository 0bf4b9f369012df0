"""The pieces that make CPU decoding cheaper, each against an independent reference:

* the preallocated KV cache layer (`kv.py`) against transformers' own `DynamicLayer`, which appends with `torch.cat`:
  the same keys and values after every update, written in place while there is room;
* bf16 decoding on a CPU (`cpu_decode.py`: packed Linear weights, q/k/v and gate/up fused; the direct step): a
  Generator decoding with them gives `model.generate`'s tokens, each piece is really called, and the model is left
  as it was."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ptst.backends.local import cpu_decode, decode, generate, kv, llama_step
from ptst.backends.local.cpu import native_bf16
from ptst.types import GenerationConfig


def _pair(b: int, n: int, seed: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g)


def test_updates_write_in_place_and_equal_concatenation():
    ref = DynamicLayer()
    ref.update(*_pair(3, 5, 0))
    layer = kv.RoomyLayer(ref.keys, ref.values, room=4)
    buffer = layer._k.data_ptr()
    for step in range(4):
        k, v = _pair(3, 1, step + 1)
        got = layer.update(k, v)
        want = ref.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert layer._k.data_ptr() == buffer  # no reallocation while there was room
    assert layer.get_seq_length() == 9 == ref.get_seq_length()
    # out of room: it moves once and goes on equal
    k, v = _pair(3, 2, 9)
    got, want = layer.update(k, v), ref.update(k, v)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and layer._k.data_ptr() != buffer


def test_row_selection_and_dropped_columns_equal_slicing_the_concatenation():
    ref = DynamicLayer()
    ref.update(*_pair(4, 6, 0))
    layer = kv.RoomyLayer(ref.keys, ref.values, room=8)
    keep = torch.tensor([0, 2, 3])
    layer.batch_select_indices(keep)
    ref.batch_select_indices(keep)
    layer.drop_front(2)
    buffer = layer._k.data_ptr()
    k, v = _pair(3, 1, 1)
    got = layer.update(k, v)
    want = torch.cat([ref.keys[:, :, 2:], k], dim=2), torch.cat([ref.values[:, :, 2:], v], dim=2)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert layer.get_seq_length() == 5 and layer._k.data_ptr() == buffer  # dropping columns copied nothing


def test_make_roomy_leaves_other_layers_alone():
    class Window(DynamicLayer):  # stands for a sliding-window layer, which keeps its own state
        pass

    cache = DynamicCache()
    cache.layers = [DynamicLayer(), Window(), DynamicLayer()]
    for layer in cache.layers[:2]:
        layer.update(*_pair(2, 3, 0))
    kv.make_roomy(cache, 5)
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [kv.RoomyLayer, Window, DynamicLayer]  # the third was never written: nothing to move
    assert cache.layers[0]._k.shape[2] == 8


def _tiny_bf16():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def _one_by_one(model, prompts, max_new: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """model.generate on each prompt alone, plain Linears (the independent reference)."""
    with torch.inference_mode():
        return [model.generate(input_ids=torch.tensor([p]), max_new_tokens=max_new, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]


def test_bf16_cpu_decoding_gives_model_generates_tokens_and_leaves_the_model_as_it_was(monkeypatch):
    """Batch 1 through the Generator (packed Linears, the direct step) equals model.generate; at batch 4
    the same loop with and without cpu_decode gives the same tokens (bf16 rows are compared like for like: a row's
    rounding may depend on the rows beside it, see decode.py)."""
    model = _tiny_bf16()
    prompts = [[1, 7 + i, 40, 99 - i, 12, 5 * i + 3][: 3 + i % 4] for i in range(6)]
    want = _one_by_one(model, prompts, 10)
    cfg = GenerationConfig(max_new_tokens=10, batch_size=4)

    def continuous() -> list[list[int]]:
        got: dict[int, list[int]] = {}
        with torch.inference_mode():
            decode.decode_continuous(model, list(enumerate(prompts)), cfg, batch_size=4, eos_id=299, pad_id=0,
                                     generator=None, on_done=got.update)
        return [got[i] for i in range(len(prompts))]

    plain = continuous()
    calls: list[int] = []
    steps: list[int] = []
    real_call = cpu_decode.PackedLinears._call
    real_fused, real_step = cpu_decode._Fused.output, llama_step.DirectStep.__call__

    def counting(self, m, x):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_call(self, m, x)

    def counting_fused(self, fn, m, x):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_fused(self, fn, m, x)

    def counting_step(self, *args):  # type: ignore[no-untyped-def]
        steps.append(1)
        return real_step(self, *args)

    monkeypatch.setattr(cpu_decode.PackedLinears, "_call", counting)
    monkeypatch.setattr(cpu_decode._Fused, "output", counting_fused)
    monkeypatch.setattr(llama_step.DirectStep, "__call__", counting_step)
    fast = cpu_decode.CpuDecoding(model, 4)
    if not fast.linears:
        assert not native_bf16(), "a CPU that multiplies bf16 natively packs its bf16 Linears"
        pytest.skip("this CPU or torch build has no exact packed bf16 kernel")
    assert len(fast.linears) == 2 * 7 + 1  # q k v o gate up down x 2 layers, lm_head
    assert len(fast.linears.fused) == 2 * 5 and len(set(fast.linears.fused.values())) == 2 * 2  # (q k v) (gate up)
    assert fast.step is not None
    with fast.applied():
        assert continuous() == plain
    g = generate.Generator(("tiny", None), model, "cpu", 256)
    alone = [g.generate([p], GenerationConfig(max_new_tokens=10, batch_size=1), eos_id=299, pad_id=0)[0]
             for p in prompts[:3]]  # batch 1: no padding, so rows compare like for like
    assert alone == want[:3]
    assert len(calls) > 15 * 10 * 4
    assert len(steps) >= 9 * 3  # the one-token steps went through the direct step
    assert not any("forward" in vars(m) for m in model.modules())  # the class's forward again after decoding
    assert model.config._attn_implementation == "sdpa"


def test_nothing_is_packed_where_the_kernel_is_not_exact_or_not_bf16(monkeypatch):
    model = _tiny_bf16()
    assert not cpu_decode.PackedLinears(model.float())  # float32: linear takes another kernel, not packed at all
    real = cpu_decode.PackedLinears._call
    model = _tiny_bf16()
    monkeypatch.setattr(cpu_decode.PackedLinears, "_call", lambda self, m, x: real(self, m, x) * 1.01)
    assert not cpu_decode.PackedLinears(model)  # a result off by a little: nothing packed, decoding stays exact

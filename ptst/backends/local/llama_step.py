"""One decoding step of a Llama-architecture model (Llama, Mistral without a sliding window) without transformers'
per-call machinery: the same modules and functions in the same order, called directly.

A decoding step at batch 4 on a CPU is some 400 small calls into torch, and the model's own forward wraps them in
more: output-recording decorators, keyword plumbing through every layer, a cache object's dispatch, the 4D mask
built from the 2D one at each step. Here a step calls each layer's norms, projections (LoRA wrappers included), the
model's rotary function, its registered attention function and the cache layer's `update` itself. Measured on
SmolLM2 (bf16, 2 threads, `benchmarks/bench_decode_cpu.py`): 25.5 against 27.9 ms a step at batch 1, 41.4 against
42.5 at batch 16; at batch 4 within the noise (27.7 against 27.3).

Numerics: the same modules and kernels on the same tensors, so the logits are bit-identical. That is checked once
per model, on this CPU and torch, on a padded and an unpadded batch, against the model's own forward; where any
logit differs (a model whose layers do something this step does not), `DirectStep.exact` is False and decoding
calls the model.
"""

from __future__ import annotations

import sys
from typing import Any

from ptst.backends.local.models import import_torch

ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM"}  # decoder layers of exactly the shape `_layer` calls


class DirectStep:
    """`step(ids, mask, positions, cache) -> logits` for one new token per row, where it is exact for this model."""

    def __init__(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model = base
        self.exact = False
        if type(base).__name__ not in ARCHITECTURES or getattr(base.config, "sliding_window", None) is not None:
            return
        attn = base.model.layers[0].self_attn
        rotary = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
        if rotary is None:
            return
        self._rotary: Any = rotary
        try:
            self.exact = self._matches_forward()
        except (AttributeError, TypeError, ValueError, RuntimeError, IndexError):  # not the structure assumed
            self.exact = False

    def __call__(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """Logits (rows, vocab) of the next token after `ids` (rows, 1), attending to the cache under the 2D `mask`."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        inner = self.model.model
        # looked up at each step: decoding may switch the implementation (cpu_decode.py)
        attention = ALL_ATTENTION_FUNCTIONS[self.model.config._attn_implementation]
        h = inner.embed_tokens(ids)
        cos_sin = inner.rotary_emb(h, position_ids=positions)
        # the mask transformers builds for one query: none without padding, else each row's columns
        mask4 = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        for i, layer in enumerate(inner.layers[: self.model.config.num_hidden_layers]):
            h = self._layer(layer, h, cos_sin, mask4, cache.layers[i], attention)
        return self.model.lm_head(inner.norm(h))[:, -1]

    def _layer(self, layer: Any, h: Any, cos_sin: tuple[Any, Any], mask4: Any, kv: Any, attention: Any) -> Any:
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = self._rotary(q, k, *cos_sin)
        k, v = kv.update(k, v)
        out, _ = attention(attn, q, k, v, mask4, dropout=0.0, scaling=attn.scaling)
        h = h + attn.o_proj(out.reshape(*x.shape[:-1], -1).contiguous())
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _matches_forward(self) -> bool:
        """Whether a step gives the model forward's logits bit for bit: two rows of different lengths (padding), and
        one row (no mask)."""
        torch = import_torch()
        from transformers import DynamicCache

        from ptst.backends.local.decode import cache_argument
        from ptst.backends.local.kv import make_roomy

        model = self.model
        arg = cache_argument(model)
        g = torch.Generator().manual_seed(0)
        vocab = model.config.vocab_size
        for lengths in ((7, 4), (5,)):
            width = max(lengths)
            ids = torch.randint(0, vocab, (len(lengths), width), generator=g)
            attn = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            nxt = torch.randint(0, vocab, (len(lengths), 1), generator=g)
            logits = []
            with torch.inference_mode():
                for direct in (False, True):
                    cache = DynamicCache(config=model.config)
                    model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **{arg: cache})
                    make_roomy(cache, 4)
                    mask = torch.cat([attn, attn.new_ones((len(lengths), 1))], dim=-1)
                    step_pos = pos[:, -1:] + 1
                    if direct:
                        logits.append(self(nxt, mask, step_pos, cache))
                    else:
                        out = model(input_ids=nxt, attention_mask=mask, position_ids=step_pos, use_cache=True,
                                    **{arg: cache})
                        logits.append(out.logits[:, -1])
            if not torch.equal(*logits):
                return False
        return True

"""Attention over a packed training row, one example at a time: one causal sdpa call per example instead of one call
over the whole row under a block-diagonal mask.

ptst trains on packed rows (`data.collate`): the examples of a micro-batch side by side in one row, position ids
restarting at 0 at each. transformers turns that into a block-diagonal causal mask and hands sdpa the whole row, and
sdpa's CPU kernel, given a mask, computes every block of the row-by-row score matrix, masked or not. Profiled on
SmolLM2-135M (2 threads, bf16, forwards of about 380 tokens holding 2 examples): attention was 28% of a training
step's time, forward and backward. Each example's own causal attention is the same arithmetic on a fraction of the
scores, and lets sdpa skip the blocks above the diagonal.

Used only where it gives the attention that mask describes: the mask transformers built for the forward is compared
once per forward with the block-diagonal causal mask of the examples that the position ids delimit. Any other mask
(padding, a sliding window shorter than an example, a model's own overlay) goes to transformers' sdpa as given.
The result equals the masked call up to float rounding (the softmax sums the same terms; the kernel's blocks start
at each example instead of at the row's start): tested against it in float32, loss and gradients.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterator
from typing import Any

from ptst.backends.local.models import import_torch

ATTENTION = "ptst_packed_sdpa"  # the name under which transformers finds `packed_sdpa`

# the last mask seen and the example lengths it was found to describe (None: not a packed block-causal mask): every
# layer of a forward receives the same mask object, so it is checked once per forward
_last: tuple[Any, list[int] | None] = (None, None)


def example_lengths(position_ids: Any) -> list[int]:
    """Lengths of the runs of consecutive positions in a row (a new example where a position does not follow the
    last one, as transformers' `find_packed_sequence_indices` reads a packed row)."""
    pos = position_ids.reshape(-1)
    starts = [0, *((pos[1:] - pos[:-1]) != 1).nonzero().flatten().add(1).tolist(), pos.numel()]
    return [b - a for a, b in itertools.pairwise(starts)]


def block_causal_mask(lengths: list[int], device: Any = "cpu") -> Any:
    """The (1, 1, n, n) boolean mask letting each position see the earlier positions of its own example."""
    torch = import_torch()
    example = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    idx = torch.arange(example.numel(), device=device)
    return ((example[:, None] == example[None, :]) & (idx[:, None] >= idx[None, :]))[None, None]


def _packed_lengths(attention_mask: Any, position_ids: Any, length: int) -> list[int] | None:
    """The example lengths when `attention_mask` is exactly their block-diagonal causal mask, else None."""
    global _last
    if attention_mask is None or position_ids is None or attention_mask.dtype != import_torch().bool:
        return None
    ref, lengths = _last
    if ref is not None and ref() is attention_mask:
        return lengths
    lengths = None
    if attention_mask.shape == (1, 1, length, length) and position_ids.numel() == length:
        found = example_lengths(position_ids)
        if len(found) > 1 and import_torch().equal(attention_mask, block_causal_mask(found, attention_mask.device)):
            lengths = found
    _last = (weakref.ref(attention_mask), lengths)
    return lengths


SHORT = 256  # examples up to this many tokens attend by explicit matmuls; longer ones by sdpa's flash kernel


def causal_attention(query, key, value, scaling: float):  # type: ignore[no-untyped-def]
    """Causal attention of one short example as transformers' eager attention computes it (scores in the model's
    dtype, softmax in float32), with the query heads that share a key/value head laid out as that head's rows
    instead of copying the key/value heads. Returns (batch, length, heads, head_dim).

    Why not sdpa: for the short rows of fine-tuning data its CPU flash kernel is slow. Measured at 9 heads of 64, 2
    threads, bf16, forward + backward: 4.96 ms against 2.59 ms at 190 tokens, 2.32 against 0.99 at 100; even at 380.
    The scores it saves for backward are (heads x length x length), hence only up to `SHORT` tokens.
    """
    torch = import_torch()
    b, heads, n, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scores = query.reshape(b, kv_heads, groups * n, d) @ key.transpose(-1, -2) * scaling
    above = torch.ones(n, n, dtype=torch.bool, device=query.device).triu_(1)
    scores = scores.view(b, kv_heads, groups, n, n).float().masked_fill(above, float("-inf"))
    probs = scores.softmax(-1).to(query.dtype).view(b, kv_heads, groups * n, n)
    return (probs @ value).view(b, heads, n, d).transpose(1, 2)


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):  # type: ignore[no-untyped-def]
    """transformers' sdpa attention, run example by example where the mask is a packed row's block-diagonal one."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch = import_torch()
    n = query.shape[2]
    lengths = None
    if (query.shape[0] == 1 and key.shape[2] == n and kwargs.get("position_bias") is None and not dropout
            and query.shape[1] % key.shape[1] == 0):
        lengths = _packed_lengths(attention_mask, kwargs.get("position_ids"), n)
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kwargs.pop("is_causal", None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    outs = [causal_attention(q, k, v, scale) if q.shape[2] <= SHORT
            else sdpa_attention_forward(module, q, k, v, None, scaling=scale, is_causal=True, **kwargs)[0]
            for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2),
                               strict=True)]
    return torch.cat(outs, dim=1), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_sdpa)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextlib.contextmanager
def packed_attention(model: Any) -> Iterator[bool]:
    """Within the block, a model on transformers' sdpa attends example by example on packed rows; yields whether it
    does (not for other attention implementations, which are left as they are)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    set_impl = getattr(base, "set_attn_implementation", None)
    if set_impl is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield False
        return
    _register()
    set_impl(ATTENTION)
    try:
        yield True
    finally:
        set_impl("sdpa")

"""Decoding loops over a transformers causal LM with a KV cache: a static batch (`decode_batch`) and a continuous one
(`decode_continuous`).

A decoding step reads every weight once whatever the batch holds, so on a CPU (and on a GPU at small batches) a step
costs about the same for 2 live rows as for 8. `model.generate` keeps a static batch to its end: a 20-token refusal
beside a 160-token answer sits finished for 140 steps. The continuous loop hands a finished row over, drops it from
the batch and its KV cache, and refills the freed slots with waiting prompts (prefilled on their own, then joined to
the batch with their cache left-padded to a common length), so every step keeps up to `batch_size` rows busy.
Greedy outputs equal `model.generate`'s: each row's tokens depend on its own prompt only (tested token for token,
in float32; in bfloat16 an attention output rounded to bf16 can come out one unit apart beside other rows' padding,
as in `model.generate`'s own batches, so a token within that rounding of a tie can differ).
Each batch's KV cache is allocated once with room for the steps to come and written in place (`kv.py`), not
concatenated at every step as transformers' DynamicCache does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ptst.backends.local.models import import_torch
from ptst.types import GenerationConfig

PRUNE_EVERY = 4  # decoding steps between checks for finished rows (each check is one host sync)

# one decoding step: (new token ids (rows, 1), 2D attention mask, position ids (rows, 1), cache) -> next-token logits
Step = Callable[[Any, Any, Any, Any], Any]


def model_step(model) -> Step:  # type: ignore[no-untyped-def]
    """A decoding step through the model's own forward."""
    cache_arg = cache_argument(model)

    def step(ids, mask, positions, cache):  # type: ignore[no-untyped-def]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg: cache})
        return out.logits[:, -1]

    return step


def select_next(logits, cfg: GenerationConfig, generator):  # type: ignore[no-untyped-def]
    """Greedy at temperature 0; otherwise temperature + nucleus (top-p) sampling."""
    torch = import_torch()
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        cum = sp.cumsum(-1)
        sp[(cum - sp) > cfg.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def cache_argument(model) -> str:  # type: ignore[no-untyped-def]
    """The name under which this transformers version's forward takes the KV cache: `cache` from 5.2x on, where
    `past_key_values` still works but warns on the user's terminal; `past_key_values` before."""
    get_base = getattr(model, "get_base_model", None)
    forward = (get_base() if get_base is not None else model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _left_padded(batch: Sequence[Sequence[int]], pad_id: int, device):  # type: ignore[no-untyped-def]
    """(ids, attention mask, position ids) of prompts left-padded to the longest."""
    torch = import_torch()
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for r, x in enumerate(batch):
        ids[r, width - len(x) :] = torch.tensor(list(x))
        attn[r, width - len(x) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


def decode_batch(  # type: ignore[no-untyped-def]
    model,
    batch: list[list[int]],
    cfg: GenerationConfig,
    *,
    eos_id: int,
    pad_id: int,
    generator,
    stop_ids: Sequence[int] = (),
    step_fn: Step | None = None,
) -> list[list[int]]:
    """A static batch: left-padded prefill, then token-by-token decoding until every row has stopped.

    Tokens stay on the device until the end; every few steps one host sync checks for finished rows, and once an
    eighth of the live rows have produced EOS they are dropped from the batch and the KV cache. A row's output is
    everything before its first stop token: EOS or any of `stop_ids` (a chat template's end-of-turn token, which is
    not EOS for every model). Used where the cache cannot be joined (`joinable_cache`). `step_fn` runs each one-token
    step (default: the model's forward; on a CPU, `llama_step.DirectStep` where it is exact).
    """
    torch = import_torch()
    from transformers import DynamicCache

    from ptst.backends.local.kv import make_roomy

    device = next(model.parameters()).device
    n = len(batch)
    ids, attn, pos = _left_padded(batch, pad_id, device)
    cache = DynamicCache(config=model.config)
    cache_arg = cache_argument(model)
    one_step = step_fn or model_step(model)
    out = model(
        input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1, **{cache_arg: cache}
    )
    nxt = select_next(out.logits[:, -1], cfg, generator)
    last_pos = pos[:, -1]
    max_new = cfg.max_new_tokens
    make_roomy(cache, max_new)
    tokens = torch.full((n, max_new), eos_id, dtype=torch.long, device=device)  # by original row
    length = torch.full((n,), max_new, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # original row of each live batch position
    done = torch.zeros(n, dtype=torch.bool, device=device)
    stops = torch.tensor(sorted({eos_id, *stop_ids}), dtype=torch.long, device=device)
    for step in range(max_new):
        tokens[rows, step] = nxt
        is_eos = torch.isin(nxt, stops)
        length[rows] = torch.where(is_eos & ~done, torch.full_like(nxt, step), length[rows])
        done = done | is_eos
        if step == max_new - 1:
            break
        if step % PRUNE_EVERY == PRUNE_EVERY - 1:
            n_done = int(done.sum())
            if n_done == len(done):
                break
            if n_done and n_done * 8 >= len(done):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                attn, nxt, last_pos, rows, done = attn[keep], nxt[keep], last_pos[keep], rows[keep], done[keep]
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=-1)
        last_pos = last_pos + 1
        nxt = select_next(one_step(nxt[:, None], attn, last_pos[:, None], cache), cfg, generator)
    lengths = length.tolist()
    return [row[:k] for row, k in zip(tokens.tolist(), lengths, strict=True)]


def joinable_cache(model) -> bool:  # type: ignore[no-untyped-def]
    """Whether this model's dynamic cache is plain per-layer key/value tensors, which rows can join: a sliding-window
    or hybrid cache keeps other state per layer, and decodes in static batches instead."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except (TypeError, AttributeError):  # a transformers without per-layer caches
        return False
    return all(type(layer) is DynamicLayer for layer in layers)


def _pad_left(t, width: int, dim: int):  # type: ignore[no-untyped-def]
    """`t` with zeros prepended along `dim` up to `width`."""
    torch = import_torch()
    extra = width - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def decode_continuous(  # type: ignore[no-untyped-def]
    model,
    prompts: Sequence[tuple[int, Sequence[int]]],
    cfg: GenerationConfig,
    *,
    batch_size: int,
    eos_id: int,
    pad_id: int,
    generator,
    on_done: Callable[[list[tuple[int, list[int]]]], None],
    stop_ids: Sequence[int] = (),
    step_fn: Step | None = None,
) -> None:
    """Decode `prompts` ((index, token ids), started in that order) keeping up to `batch_size` rows live, handing
    each finished row to `on_done([(index, ids up to its first stop token), ...])` as soon as it leaves the batch.
    `step_fn` runs each one-token step, as in `decode_batch`."""
    torch = import_torch()
    from transformers import DynamicCache

    from ptst.backends.local.kv import drop_front, make_roomy

    device = next(model.parameters()).device
    cache_arg = cache_argument(model)
    one_step = step_fn or model_step(model)
    stops = torch.tensor(sorted({eos_id, *stop_ids}), dtype=torch.long, device=device)
    max_new = cfg.max_new_tokens
    cols = max_new + PRUNE_EVERY  # a row may run a few steps past its end before the next check sees it
    waiting = list(prompts)[::-1]  # popped from the end: started in the given order
    live_idx: list[int] = []
    # the live batch, None between batches (Any: torch's own annotations do not follow these through nonlocal)
    cache: Any = None
    attn: Any = None
    nxt: Any = None
    last_pos: Any = None
    tokens: Any = None
    count: Any = None
    stop_at: Any = None

    def admit(k: int) -> None:
        """Prefill the next `k` waiting prompts and join them to the live batch."""
        nonlocal cache, attn, nxt, last_pos, tokens, count, stop_at
        group = [waiting.pop() for _ in range(min(k, len(waiting)))]
        ids, g_attn, pos = _left_padded([p for _, p in group], pad_id, device)
        g_cache: Any = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=g_attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                    **{cache_arg: g_cache})
        first = select_next(out.logits[:, -1], cfg, generator)
        n = len(group)
        g_tokens = torch.full((n, cols), eos_id, dtype=torch.long, device=device)
        g_tokens[:, 0] = first
        g_count = torch.ones(n, dtype=torch.long, device=device)
        g_stop = torch.where(torch.isin(first, stops), 0, -1)
        if cache is None:
            cache, attn, nxt, last_pos = g_cache, g_attn, first, pos[:, -1]
            tokens, count, stop_at = g_tokens, g_count, g_stop
        else:
            width = max(attn.shape[1], g_attn.shape[1])
            for layer, g_layer in zip(cache.layers, g_cache.layers, strict=True):
                layer.keys = torch.cat([_pad_left(layer.keys, width, 2), _pad_left(g_layer.keys, width, 2)])
                layer.values = torch.cat([_pad_left(layer.values, width, 2), _pad_left(g_layer.values, width, 2)])
            attn = torch.cat([_pad_left(attn, width, 1), _pad_left(g_attn, width, 1)])
            nxt, last_pos = torch.cat([nxt, first]), torch.cat([last_pos, pos[:, -1]])
            tokens, count, stop_at = torch.cat([tokens, g_tokens]), torch.cat([count, g_count]), torch.cat([stop_at, g_stop])
        make_roomy(cache, cols)  # one copy per admission; the steps until the next one write in place
        live_idx.extend(i for i, _ in group)
        # the loop step at whose start these rows hold max_new tokens: checked then, not up to PRUNE_EVERY - 1
        # wasted steps later (admitted before step s's forward, a row holds 1 + t - s tokens at step t's start)
        due.add(max(step, 1) + max_new - 1)

    def hand_over(finished) -> None:  # type: ignore[no-untyped-def]
        """Give the finished rows to `on_done` and drop them from the batch and its cache."""
        nonlocal cache, attn, nxt, last_pos, tokens, count, stop_at, live_idx
        rows = finished.nonzero().squeeze(-1)
        lengths = torch.where(stop_at[rows] >= 0, stop_at[rows], torch.clamp(count[rows], max=max_new)).tolist()
        got = tokens[rows].tolist()
        on_done([(live_idx[r], got[j][: lengths[j]]) for j, r in enumerate(rows.tolist())])
        keep = (~finished).nonzero().squeeze(-1)
        kept = keep.tolist()
        live_idx = [live_idx[r] for r in kept]
        if not kept:
            cache = attn = nxt = last_pos = tokens = count = stop_at = None
            return
        cache.batch_select_indices(keep)
        attn, nxt, last_pos = attn[keep], nxt[keep], last_pos[keep]
        tokens, count, stop_at = tokens[keep], count[keep], stop_at[keep]
        # columns that are padding in every row left (the longest prompt's row finished) are dropped too
        lead = int((attn.cumsum(-1) == 0).sum(-1).min())
        if lead:
            attn = attn[:, lead:]
            drop_front(cache, lead)

    due: set[int] = set()
    step = 0
    admit(batch_size)
    while live_idx:
        step += 1
        if step % PRUNE_EVERY == 0 or max_new <= PRUNE_EVERY or step in due:
            finished = (stop_at >= 0) | (count >= max_new)
            n_done = int(finished.sum())
            if n_done and (n_done * 8 >= len(live_idx) or n_done == len(live_idx) or not waiting):
                hand_over(finished)
                free = batch_size - len(live_idx)
                if waiting and (free * 8 >= batch_size or not live_idx):
                    admit(free)
                if not live_idx:
                    continue
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=-1)
        last_pos = last_pos + 1
        nxt = select_next(one_step(nxt[:, None], attn, last_pos[:, None], cache), cfg, generator)
        col = torch.clamp(count, max=cols - 1)
        tokens[torch.arange(len(live_idx), device=device), col] = nxt
        stop_at = torch.where((stop_at < 0) & torch.isin(nxt, stops) & (count < max_new), count, stop_at)
        count = count + 1

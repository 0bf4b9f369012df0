"""Batched generation with transformers: prompts sorted by length, left padding, greedy or sampled, finished rows
dropped from the batch (and its KV cache) as they stop, auto batch size that halves on out-of-memory; adapters
merged into the base weights."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from ptst.backends.local.adapters import quiet_peft, read_adapter_metadata
from ptst.backends.local.models import free_memory, import_torch, is_oom, load_causal_lm, resolve_device, resolve_dtype
from ptst.backends.local.resident import detach_adapter, is_resident, resident_base

from ptst.errors import BackendError, require
from ptst.types import GenerationConfig

_LIVE: weakref.WeakSet[Generator] = weakref.WeakSet()


def release_generators() -> None:
    """Close every loaded generator (of any backend): the next model, training run or vLLM engine gets the GPU."""
    for g in list(_LIVE):
        g.close()


class Generator:
    """A loaded model (base + adapter, merged when possible) that generates for many prompt batches."""

    def __init__(self, key: tuple[str, str | None], model, device: str, max_batch: int):  # type: ignore[no-untyped-def]
        self.key = key
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self._batch_size: int | None = None  # learnt: the largest size that fitted
        _LIVE.add(self)

    @property
    def closed(self) -> bool:
        return self.model is None

    @classmethod
    def load(
        cls,
        base_model: str,
        adapter_dir: str | None,
        *,
        dtype: str = "auto",
        device: str | None = None,
        attn_implementation: str | None = None,
        merge: bool = True,
        max_batch: int = 256,
    ) -> Generator:
        dev = resolve_device(device)
        if merge and adapter_dir is not None:  # a private copy to merge into (faster decoding, one more model)
            model = load_causal_lm(
                base_model, dtype=resolve_dtype(dtype, dev), device=dev, attn_implementation=attn_implementation
            )
        else:  # the process's resident base; an adapter goes on top of it and comes off at close()
            release_generators()  # whoever had an adapter on the resident base takes it off first
            model = resident_base(base_model, dtype=resolve_dtype(dtype, dev), device=dev,
                                  attn_implementation=attn_implementation)
        if adapter_dir is not None:
            require("peft", "loading a LoRA adapter", "local")
            from peft import PeftModel

            if read_adapter_metadata(Path(adapter_dir)) is None:
                raise BackendError(f"adapter directory {adapter_dir} is missing or incomplete; re-run the fine-tune")
            with quiet_peft():
                model = PeftModel.from_pretrained(model, adapter_dir)
            if merge:
                model = model.merge_and_unload()
        model.eval()
        return cls((base_model, adapter_dir), model, dev, max_batch)

    def close(self) -> None:
        if self.model is None:
            return
        dev, model = self.device, self.model
        self.model = None
        _LIVE.discard(self)
        if _on_resident(model):
            detach_adapter(model)
        del model
        free_memory(dev)

    def auto_batch_size(self, n: int, max_len: int, max_new_tokens: int) -> int:
        """As many rows as the KV cache of `max_len + max_new_tokens` tokens fits in 70% of free GPU memory."""
        if self._batch_size is not None:
            return max(1, min(n, self._batch_size))
        torch = import_torch()
        if not self.device.startswith("cuda"):
            return max(1, min(n, 32, self.max_batch))
        cfg = self.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_token = 2 * cfg.num_hidden_layers * heads * head_dim * self.model.dtype.itemsize
        per_row = per_token * (max_len + max_new_tokens) * 1.3  # + activations and logits
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return max(1, min(n, self.max_batch, int(0.7 * free / per_row)))

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: GenerationConfig,
        *,
        eos_id: int,
        pad_id: int,
        stop_ids: Sequence[int] = (),
        on_batch: Callable[[list[tuple[int, list[int]]]], None] | None = None,
    ) -> list[list[int]]:
        """Generated token ids (up to, without, the first EOS or stop id) for each prompt, in input order; each
        decoded batch also goes to `on_batch([(prompt index, ids), ...])` as it finishes, so the caller can store it
        before the next batch starts."""
        torch = import_torch()
        if not prompts:
            return []
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows early
        fixed = cfg.batch_size if isinstance(cfg.batch_size, int) else None
        bs = fixed or self.auto_batch_size(len(prompts), len(prompts[order[0]]), cfg.max_new_tokens)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        out: list[list[int] | None] = [None] * len(prompts)
        i = 0
        while i < len(order):
            idx = order[i : i + bs]
            try:
                with torch.inference_mode():
                    batch = [list(prompts[j]) for j in idx]
                    res = decode_batch(
                        self.model, batch, cfg, eos_id=eos_id, pad_id=pad_id, generator=gen, stop_ids=stop_ids
                    )
            except Exception as e:
                if not is_oom(e):
                    raise
                free_memory(self.device)
                if bs == 1:
                    raise BackendError(
                        f"out of GPU memory generating at batch size 1 (prompt of {len(prompts[idx[0]])} tokens + "
                        f"max_new_tokens {cfg.max_new_tokens}): lower max_new_tokens, use a smaller dtype or a "
                        "larger GPU"
                    ) from None
                bs = max(1, bs // 2)
                self._batch_size = bs
                continue
            for j, r in zip(idx, res, strict=True):
                out[j] = r
            if on_batch is not None:
                on_batch(list(zip(idx, res, strict=True)))
            i += len(idx)
        return [o or [] for o in out]


def _on_resident(model) -> bool:  # type: ignore[no-untyped-def]
    """Whether `model` is a PeftModel wrapped around the resident base (its adapter must come off at close)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base is not None and is_resident(get_base())


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


PRUNE_EVERY = 4  # decoding steps between checks for finished rows (each check is one host sync)


def decode_batch(  # type: ignore[no-untyped-def]
    model,
    batch: list[list[int]],
    cfg: GenerationConfig,
    *,
    eos_id: int,
    pad_id: int,
    generator,
    stop_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Left-padded prefill, then token-by-token decoding with a KV cache.

    Tokens stay on the device until the end; every few steps one host sync checks for finished rows, and once an
    eighth of the live rows have produced EOS they are dropped from the batch and the KV cache, so long answers do
    not drag short ones. A row's output is everything before its first stop token: EOS or any of `stop_ids` (a
    chat template's end-of-turn token, which is not EOS for every model).
    """
    torch = import_torch()
    from transformers import DynamicCache

    device = next(model.parameters()).device
    n = len(batch)
    width = max(len(x) for x in batch)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for r, x in enumerate(batch):
        ids[r, width - len(x) :] = torch.tensor(x)
        attn[r, width - len(x) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    cache_arg = cache_argument(model)
    out = model(
        input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1, **{cache_arg: cache}
    )
    nxt = select_next(out.logits[:, -1], cfg, generator)
    last_pos = pos[:, -1]
    max_new = cfg.max_new_tokens
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
        out = model(
            input_ids=nxt[:, None],
            attention_mask=attn,
            position_ids=last_pos[:, None],
            use_cache=True,
            **{cache_arg: cache},
        )
        nxt = select_next(out.logits[:, -1], cfg, generator)
    lengths = length.tolist()
    return [row[:k] for row, k in zip(tokens.tolist(), lengths, strict=True)]

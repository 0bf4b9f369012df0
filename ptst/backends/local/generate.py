"""Batched generation with transformers: a loaded model (the resident base with an adapter on top, or a merged copy)
that decodes many prompts, longest first, with continuous batching where the cache allows (`decode.py`), handing
each finished response over as it leaves the batch; an automatic batch size that halves on out-of-memory."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from ptst.backends.local.adapters import quiet_peft, read_adapter_metadata
from ptst.backends.local.cpu_decode import CpuDecoding
from ptst.backends.local.decode import decode_batch, decode_continuous, joinable_cache
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

    def __init__(  # type: ignore[no-untyped-def]
        self, key: tuple[str, str | None], model, device: str, max_batch: int, threads: int | None = None
    ):
        self.key = key
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.threads = threads  # CPU threads asked for (None: sized to the free cores at each call, see cpu.py)
        self._batch_size: int | None = None  # learnt: the largest size that fitted
        self._continuous: bool | None = None  # whether rows can join the batch as others finish (decode.py)
        self._cpu: CpuDecoding | None = None  # CPU: packed weights, the direct step (cpu_decode.py)
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
        threads: int | None = None,
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
        return cls((base_model, adapter_dir), model, dev, max_batch, threads)

    def close(self) -> None:
        if self.model is None:
            return
        dev, model = self.device, self.model
        self.model = None
        self._cpu = None
        _LIVE.discard(self)
        if _on_resident(model):
            detach_adapter(model)
        del model
        free_memory(dev)

    def _joinable(self) -> bool:
        if self._continuous is None:
            self._continuous = joinable_cache(self.model)
        return self._continuous

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
        if self.device == "cpu":
            from ptst.backends.local.cpu import apply_threads

            apply_threads(self.threads)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows early
        fixed = cfg.batch_size if isinstance(cfg.batch_size, int) else None
        bs = fixed or self.auto_batch_size(len(prompts), len(prompts[order[0]]), cfg.max_new_tokens)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        out: list[list[int] | None] = [None] * len(prompts)

        def done(pairs: list[tuple[int, list[int]]]) -> None:
            for j, r in pairs:
                out[j] = r
            if on_batch is not None:
                on_batch(pairs)

        continuous = self._joinable()
        if self._cpu is None:
            self._cpu = CpuDecoding(self.model if self.device == "cpu" else None, bs)
        while True:
            todo = [j for j in order if out[j] is None]  # after an out-of-memory: what was not handed over yet
            if not todo:
                break
            try:
                with torch.inference_mode(), self._cpu.applied():
                    if continuous:
                        decode_continuous(self.model, [(j, prompts[j]) for j in todo], cfg, batch_size=bs,
                                          eos_id=eos_id, pad_id=pad_id, generator=gen, on_done=done,
                                          stop_ids=stop_ids, step_fn=self._cpu.step)
                    else:
                        for i in range(0, len(todo), bs):
                            idx = todo[i : i + bs]
                            res = decode_batch(self.model, [list(prompts[j]) for j in idx], cfg, eos_id=eos_id,
                                               pad_id=pad_id, generator=gen, stop_ids=stop_ids,
                                               step_fn=self._cpu.step)
                            done(list(zip(idx, res, strict=True)))
            except Exception as e:
                if not is_oom(e):
                    raise
                free_memory(self.device)
                if bs == 1:
                    raise BackendError(
                        f"out of GPU memory generating at batch size 1 (prompt of {len(prompts[todo[0]])} tokens + "
                        f"max_new_tokens {cfg.max_new_tokens}): lower max_new_tokens, use a smaller dtype or a "
                        "larger GPU"
                    ) from e
                bs = max(1, bs // 2)
                self._batch_size = bs
        return [o or [] for o in out]


def _on_resident(model) -> bool:  # type: ignore[no-untyped-def]
    """Whether `model` is a PeftModel wrapped around the resident base (its adapter must come off at close)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base is not None and is_resident(get_base())

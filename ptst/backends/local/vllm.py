"""`engine: vllm`: high-throughput generation through vLLM, token ids in and out (the rendering stays ptst's).

One engine holds the GPU at a time: it is built for a base model and kept while prompts for that model (and its
LoRA adapters, served as LoRA requests) keep coming, and released before anything else needs the GPU (another base
model, the transformers generator, training). It runs in the dtype the transformers path uses, with room for the
adapter's LoRA rank. Not exercised by the CPU test suite (needs a GPU and vLLM).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptst.backends.local.models import import_torch, local_model_dir, resolve_dtype
from ptst.errors import PtstError, first_line
from ptst.types import GenerationConfig, ModelRef

if TYPE_CHECKING:
    from ptst.backends.local.backend import LocalOptions

# vLLM accepts these values of max_lora_rank; an adapter of rank r needs the smallest one >= r.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class _Engine:
    base: str
    dtype: str
    max_lora_rank: int
    llm: Any
    adapters: dict[str, int] = field(default_factory=dict)


_ENGINE: _Engine | None = None


def vllm_lora_rank(r: int) -> int:
    for v in VLLM_LORA_RANKS:
        if v >= r:
            return v
    raise PtstError(f"LoRA rank {r} is above what vLLM serves ({VLLM_LORA_RANKS[-1]}); set engine: hf")


def adapter_rank(adapter_dir: str | None) -> int | None:
    """The adapter's LoRA r (the spec's `lora.r`), from peft's adapter_config.json."""
    if adapter_dir is None:
        return None
    try:
        return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError):
        return None


def release_vllm() -> None:
    """Free the vLLM engine and its GPU memory (a no-op when none is loaded)."""
    global _ENGINE
    if _ENGINE is None:
        return
    _ENGINE = None
    try:  # vLLM keeps process-group state beside the engine
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except ImportError:  # a vLLM without these helpers keeps no such state
        pass
    else:
        try:
            destroy_model_parallel()
            destroy_distributed_environment()
        except (AssertionError, RuntimeError, ValueError) as e:  # torch.distributed's "not initialized" and the like
            from ptst.backends.api import log

            log(f"warning: vLLM's process groups were not torn down ({first_line(e)}); GPU memory may stay held")
    gc.collect()
    torch = import_torch()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _engine_for(base: str, dtype: str, rank: int | None) -> _Engine:
    global _ENGINE
    from vllm import LLM

    e = _ENGINE
    if e is not None and e.base == base and e.dtype == dtype and (rank is None or e.max_lora_rank >= rank):
        return e
    want = max(vllm_lora_rank(rank or 8), e.max_lora_rank if (e is not None and e.base == base) else 8)
    release_vllm()
    llm = LLM(model=base, dtype=dtype, enable_lora=True, max_lora_rank=want, seed=0)
    _ENGINE = _Engine(base=base, dtype=dtype, max_lora_rank=want, llm=llm)
    return _ENGINE


def generate_vllm(
    model: ModelRef,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    options: LocalOptions,
    *,
    eos_id: int,
    stop_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Generated token ids (up to, without, the first EOS or stop id) per prompt, the adapter as a LoRA request."""
    try:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise PtstError("engine: vllm needs vLLM installed (pip install vllm), or set engine: hf") from e
    base = str(local_model_dir(model.base_model))
    dtype = str(resolve_dtype(options.dtype, "cuda")).removeprefix("torch.")  # what the transformers path uses
    engine = _engine_for(base, dtype, adapter_rank(model.adapter_dir))
    stops = sorted({eos_id, *stop_ids})
    params = SamplingParams(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        stop_token_ids=stops,
    )
    lora = None
    if model.adapter_dir is not None:
        n = engine.adapters.setdefault(model.adapter_dir, len(engine.adapters) + 1)
        lora = LoRARequest(f"adapter-{n}", n, model.adapter_dir)
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, lora_request=lora)
    return [cut_at_stop(list(o.outputs[0].token_ids), stops) for o in outs]


def cut_at_stop(ids: list[int], stops: Sequence[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids

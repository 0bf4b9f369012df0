"""`engine: vllm`: high-throughput generation through vLLM, token ids in and out (the rendering stays ptst's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptst.backends.local.models import local_model_dir
from ptst.errors import PtstError
from ptst.types import GenerationConfig, ModelRef

if TYPE_CHECKING:
    from ptst.backends.local.backend import LocalOptions

_VLLM: dict[str, Any] = {}


def generate_vllm(
    model: ModelRef, prompts: list[list[int]], cfg: GenerationConfig, options: LocalOptions, *, eos_id: int
) -> list[list[int]]:
    """High-throughput generation through vLLM (`engine: vllm`), the adapter served as a LoRA request.

    Token ids in, token ids out, so the rendering stays ptst's own. The engine is built once per base model and
    kept; adapters are swapped per request. Not exercised by the test suite (needs a GPU and vLLM).
    """
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise PtstError("engine: vllm needs vLLM installed (pip install vllm), or set engine: hf") from None
    base = str(local_model_dir(model.base_model))
    if _VLLM.get("base") != base:
        _VLLM.clear()
        _VLLM["base"] = base
        _VLLM["llm"] = LLM(
            model=base, dtype="auto" if options.dtype == "auto" else options.dtype, enable_lora=True,
            max_lora_rank=64, seed=cfg.seed,
        )
    llm = _VLLM["llm"]
    params = SamplingParams(
        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=cfg.seed,
        stop_token_ids=[eos_id],
    )
    lora = None
    if model.adapter_dir is not None:
        ids = _VLLM.setdefault("adapters", {})
        ids.setdefault(model.adapter_dir, len(ids) + 1)
        lora = LoRARequest(f"adapter-{ids[model.adapter_dir]}", ids[model.adapter_dir], model.adapter_dir)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, lora_request=lora)
    return [[t for t in o.outputs[0].token_ids if t != eos_id] for o in outs]


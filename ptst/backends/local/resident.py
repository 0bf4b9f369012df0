"""One base model resident per process: training and generation put their LoRA adapters on it and take them off.

A PTST grid trains and evaluates many cells on one base model. Loading a fresh copy per cell (and merging each
adapter into it) costs a model's load time per cell and, on CPU, a process's peak memory grows with every copy that
the allocator does not hand back. Here the base is loaded once (per model, dtype, device and attention kernel) and
peft injects an adapter into it in place (`get_peft_model` for training, `PeftModel.from_pretrained` for
generation); `detach_adapter` removes the LoRA layers again (`unload()`), restoring the original modules bit for bit
(nothing is merged into the base weights, so no rounding accumulates across cells).

Asking for another base model drops the resident one first: one model in memory at a time.
"""

from __future__ import annotations

import warnings
from typing import Any

from ptst.backends.local.models import default_attn_implementation, free_memory, load_causal_lm

_RESIDENT: dict[str, Any] = {}  # {"key": (model, dtype, device, attn), "model": nn.Module}


def resident_base(model: str, *, dtype, device: str, attn_implementation: str | None):  # type: ignore[no-untyped-def]
    """The process's base model for these settings, loaded on first use and reused after (adapter-free, eval mode)."""
    key = (model, str(dtype), device, attn_implementation or default_attn_implementation(device))
    if _RESIDENT.get("key") == key:
        return _RESIDENT["model"]
    release_base()
    m = load_causal_lm(model, dtype=dtype, device=device, attn_implementation=attn_implementation)
    m.requires_grad_(False)
    m.eval()
    _RESIDENT.update(key=key, model=m)
    return m


def is_resident(module) -> bool:  # type: ignore[no-untyped-def]
    return _RESIDENT.get("model") is module


def release_base() -> None:
    """Drop the resident model (another base model is wanted, or its memory is)."""
    if not _RESIDENT:
        return
    device = _RESIDENT["key"][2]
    _RESIDENT.clear()
    free_memory(device)


def detach_adapter(peft_model):  # type: ignore[no-untyped-def]
    """Take every LoRA layer off a PeftModel built on the resident base, leaving the base as it was loaded (eval mode,
    no gradients, cache on). If that fails, the base is dropped rather than kept in an unknown state."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            base = peft_model.unload()
        for attr in ("peft_config", "_hf_peft_config_loaded"):  # what peft leaves on the instance
            base.__dict__.pop(attr, None)
        base.requires_grad_(False)
        base.eval()
        base.config.use_cache = True
        checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers 5.2x; the old name warns
        if checkpointing is None:
            checkpointing = getattr(base, "is_gradient_checkpointing", False)
        if checkpointing:
            if hasattr(base, "activation_checkpointing_disable"):
                base.activation_checkpointing_disable()
            else:
                base.gradient_checkpointing_disable()
        return base
    except Exception:
        release_base()
        raise

"""Device, dtype and model loading for the local engine: offline only, with one-line errors.

torch and transformers are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

from ptst.backends.local.resolver import (  # re-exported: the engine's modules import them from here
    DOWNLOAD_PATTERNS,
    ModelUnavailable,
    download_model,
    hub_id_problem,
    is_hub_id,
    local_model_dir,
    model_dir_problem,
    not_cached_problem,
    uncached_hub_id,
)
from ptst.errors import BackendError, PtstError, first_line, require

__all__ = [
    "DOWNLOAD_PATTERNS", "ModelUnavailable", "download_model", "first_line", "hub_id_problem", "is_hub_id",
    "local_model_dir", "model_dir_problem", "not_cached_problem", "uncached_hub_id",
]

# The oldest transformers the local engine is verified with. Packed training relies on transformers building a
# per-example (block-diagonal) causal mask from restarting position_ids when no attention mask is given: flash
# attention's varlen path had it earlier, but sdpa/eager got it only with the masking rework of 4.54 (before that a
# packed row silently cross-attends between examples). Loading uses `from_pretrained(dtype=...)` and generation
# `DynamicCache(config=...)`, both from 4.56.
MIN_TRANSFORMERS = (4, 56)


class LibraryTooOld(PtstError):
    """An installed library is older than the local engine supports (exit 2: the environment, not a bug)."""

    exit_code = 2


def check_transformers() -> None:
    """Refuse a transformers too old for packed attention, before any model is loaded (no silent cross-attention)."""
    from importlib.metadata import version

    require("transformers", "the local backends", "local")
    installed = version("transformers")
    parts = []
    for p in installed.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise LibraryTooOld(
            f"transformers {installed} is too old for the local backends (packed training needs per-example "
            f"attention from position ids, verified from {need}); pip install -U 'transformers>={need}'"
        )


def import_torch():  # type: ignore[no-untyped-def]
    return require("torch", "the local backends (llama2, mistral)", "local")


def resolve_device(device: str | None) -> str:
    torch = import_torch()
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(
                f"device {device!r} was asked for but no CUDA GPU is visible; set device: cpu or fix CUDA"
            )
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):  # type: ignore[no-untyped-def]
    """The torch dtype of the frozen base: `auto` is bfloat16 on a GPU and on a CPU that multiplies it natively
    (AVX-512 BF16, AMX: see cpu.py), float32 on other CPUs. LoRA weights and optimizer state stay float32 whatever
    the base (peft keeps adapters in float32 over a bf16 base)."""
    torch = import_torch()
    return getattr(torch, resolved_dtype_name(dtype, device))


def resolved_dtype_name(dtype: str, device: str) -> str:
    """`dtype` as `resolve_dtype` resolves it on `device`, by name (float32, bfloat16, float16)."""
    if dtype != "auto":
        return dtype
    from ptst.backends.local.cpu import native_bf16

    return "bfloat16" if device.startswith("cuda") or native_bf16() else "float32"


def default_attn_implementation(device: str) -> str:
    """flash-attention's varlen kernels make packed training truly padding-free; sdpa is the portable default."""
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_causal_lm(model: str, *, dtype, device: str, attn_implementation: str | None):  # type: ignore[no-untyped-def]
    """Load a base model from a local directory or the local HF cache only (never the network)."""
    check_transformers()
    import torch
    from transformers import AutoModelForCausalLM

    path = local_model_dir(model)
    try:
        # weights materialise on the CPU whatever default device the calling process left set (a library user's
        # `torch.set_default_device`, a leaked `torch.device("meta")` context): never a model of empty tensors
        with torch.device("cpu"):
            m = AutoModelForCausalLM.from_pretrained(
                str(path),
                dtype=dtype,
                local_files_only=True,
                attn_implementation=attn_implementation or default_attn_implementation(device),
            )
    except (OSError, ValueError) as e:
        raise BackendError(
            f"model {model} cannot be loaded from {path} ({first_line(e)}); it must be an HF-format model "
            "directory (config.json + weights)"
        ) from e
    _tie_if_left_empty(m)
    return m.to(device)  # type: ignore[arg-type]  # transformers' stub wraps .to oddly


def _tie_if_left_empty(m) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint with tied embeddings stores no `lm_head`; transformers ties it to the input embeddings after
    loading. Once in a full CI run (1 of 2, same commit) it reported `lm_head.weight` missing and left it as an empty
    (meta) tensor, which `.to` then refused. Tie it here as the config says, so the model is always whole."""
    out, inp = m.get_output_embeddings(), m.get_input_embeddings()
    if (out is not None and inp is not None and getattr(m.config, "tie_word_embeddings", False)
            and out.weight.is_meta and not inp.weight.is_meta and out.weight.shape == inp.weight.shape):
        out.weight = inp.weight


def is_oom(e: BaseException) -> bool:
    torch = import_torch()
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def free_memory(device: str) -> None:
    import gc

    gc.collect()
    torch = import_torch()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    elif device == "cpu":
        from ptst.backends.local.cpu import trim_heap

        trim_heap()

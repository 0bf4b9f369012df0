"""Device, dtype and model loading for the local engine: offline only, with one-line errors.

torch and transformers are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from ptst.errors import BackendError, require


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
    torch = import_torch()
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def default_attn_implementation(device: str) -> str:
    """flash-attention's varlen kernels make packed training truly padding-free; sdpa is the portable default."""
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def local_model_dir(model: str) -> Path:
    """The local directory of a model: the path itself, or the model id's snapshot in the local HF cache.

    Resolving the cache ourselves (`snapshot_download(local_files_only=True)`) keeps transformers from probing the
    hub at all (its adapter auto-detection does, whatever `local_files_only` says), so a missing model fails at once.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - not cached, malformed id, hub library missing: all the same to the user
        raise BackendError(
            f"model {model!r} cannot be loaded offline (not a local directory, not in the local Hugging Face cache: "
            f"{first_line(e)}); download it first (huggingface-cli download {model}) or set model: to a local "
            "HF-format directory"
        ) from None


def load_causal_lm(model: str, *, dtype, device: str, attn_implementation: str | None):  # type: ignore[no-untyped-def]
    """Load a base model from a local directory or the local HF cache only (never the network)."""
    require("transformers", "the local backends (llama2, mistral)", "local")
    from transformers import AutoModelForCausalLM

    path = local_model_dir(model)
    try:
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
        ) from None
    return m.to(device)


def first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    text = s[0] if s else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


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


"""Device, dtype and model loading for the local engine: offline only, with one-line errors.

torch and transformers are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from ptst.errors import BackendError, PtstError, first_line, require

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
    from ptst.backends.local.gguf import converted_dir, is_gguf

    if is_gguf(model):  # a llama.cpp file: dequantized once into an HF-format folder (see gguf.py)
        return converted_dir(model)
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as e:
        raise BackendError(
            f"model {model!r} cannot be loaded offline (not a local directory, not in the local Hugging Face cache: "
            f"{first_line(e)}); download it first (huggingface-cli download {model}) or set model: to a local "
            "HF-format directory"
        ) from e


# What `download: true` fetches of a hub repository: weights, configs and tokenizer files (hub repositories often carry
# ONNX, GGUF or original-format copies too, many gigabytes that no backend here reads).
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.model.v*", "*.txt"]


class ModelUnavailable(PtstError):
    """A hub model could not be fetched (`download: true`): the network, the id or access is the user's to fix."""

    exit_code = 2


def is_hub_id(model: str) -> bool:
    """Whether `model` names a hub repository (`name` or `org/name`) rather than a local folder: nothing by that name
    exists here, it is not written as a path (absolute, `./x`, `~`, a backslash) and has at most one slash."""
    return not (
        model.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in model
        or model.count("/") >= 2
        or Path(model).expanduser().exists()
    )


def hub_id_problem(model: str) -> str | None:
    """Why `model` cannot be a hub repository id (the hub's own naming rules, checked offline), or None."""
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:  # no hub client: nothing to check against (and nothing could be downloaded)
        return None
    try:
        validate_repo_id(model)
    except ValueError as e:  # HFValidationError
        return (f"model {model!r} is neither a local folder nor a valid hub id ({first_line(e)}); give an existing "
                "folder or an id such as org/name")
    return None


def uncached_hub_id(model: str) -> bool:
    """A hub id whose snapshot is not in the local Hugging Face cache (so loading it offline is certain to fail)."""
    if not is_hub_id(model):
        return False
    try:
        local_model_dir(model)
    except BackendError:
        return True
    return False


def not_cached_problem(kind: str, model: str) -> str:
    """The one line for a hub id a backend without `download: true` cannot load: what to do, three ways."""
    return (
        f"model {model!r} is not a local directory nor in the local Hugging Face cache, and kind: {kind} downloads "
        f"nothing unless told to; run `huggingface-cli download {model}`, set download: true in the backend entry, "
        "or point model: at a local HF-format directory"
    )


def download_model(model: str) -> Path:
    """The local directory of `model`, fetching a hub id into the local Hugging Face cache first when it is not there
    (`download: true`); later lookups find it in the cache like any other cached model."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    hub = require("huggingface_hub", "download: true (fetching a hub model)", "local")
    try:
        return Path(hub.snapshot_download(model, local_files_only=True))
    except (OSError, ValueError):  # not cached yet (LocalEntryNotFoundError is an OSError): fetch it below
        pass
    try:
        return Path(hub.snapshot_download(model, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as e:
        raise ModelUnavailable(
            f"model {model!r} could not be downloaded ({type(e).__name__}: {first_line(e)}); check the hub id, the "
            f"network and your access, or run `huggingface-cli download {model}` and set download: false"
        ) from e


def load_causal_lm(model: str, *, dtype, device: str, attn_implementation: str | None):  # type: ignore[no-untyped-def]
    """Load a base model from a local directory or the local HF cache only (never the network)."""
    check_transformers()
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
        ) from e
    return m.to(device)  # type: ignore[arg-type]  # transformers' stub wraps .to oddly




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



def model_dir_problem(model: str) -> str | None:
    """Why `model` cannot be loaded offline as an HF-format directory (None when it can), without loading it.
    A GGUF file is checked from its header (no conversion, no torch)."""
    from ptst.backends.local.gguf import gguf_problem, is_gguf

    if is_gguf(model):
        return gguf_problem(model)
    try:
        path = local_model_dir(model)
    except BackendError as e:
        return str(e)
    if not (path / "config.json").is_file():
        return f"model {model}: {path} has no config.json; it must be an HF-format model directory (config + weights)"
    return None

"""Where a model's files are: one resolver for every local backend (`kind: llama2`, `mistral`, `hf`).

A model is a local HF-format folder, a llama.cpp `.gguf` file (dequantized once into a folder, see gguf.py), or a
hub id found in the local Hugging Face cache, fetched into it only where the spec says `download: true`. Resolving
the cache ourselves (`snapshot_download(local_files_only=True)`) keeps transformers from probing the hub at all.
Nothing here imports torch or transformers: `ptst validate` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from ptst.errors import BackendError, first_line, require


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


class ModelUnavailable(BackendError):
    """A hub model that is not here and was not (or could not be) fetched: the network, the id, access or the
    spec's `download` is the user's to fix (exit 2)."""

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



def resolve_model_dir(model: str, *, download: bool, kind: str) -> Path:
    """The local directory of `model` (see `local_model_dir`), fetched first with `download` when it is a hub id not
    in the cache. Not found and not fetched: a user error saying the ways out."""
    from ptst.backends.local.gguf import converted_dir, is_gguf

    if is_gguf(model):
        return converted_dir(model)
    try:
        return local_model_dir(model)
    except BackendError:
        if download and is_hub_id(model):
            return download_model(model)
    if is_hub_id(model):
        raise ModelUnavailable(not_cached_problem(kind, model))
    raise ModelUnavailable(f"model {model!r} is not a local directory nor in the local Hugging Face cache; point "
                           "model: at a local HF-format directory, or give a hub id")


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

"""LoRA adapter directories: saved weights (safetensors) plus a metadata file written last.

A directory holding the metadata file is a complete adapter; anything else (a crash mid-save) is redone.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptst.backends.local.train import TrainSettings

@contextlib.contextmanager
def quiet_peft() -> Any:
    """peft (0.21) reads transformers' `is_gradient_checkpointing`, which 5.2x deprecates with a FutureWarning on
    every call: that warning is about peft's code, not the user's, so it stays off their terminal."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


METADATA_FILE = "ptst_adapter.json"  # written last: its presence marks a complete adapter directory
ADAPTER_DIR = "adapter"
TRAIN_LOG = "train_log.jsonl"
FORMAT = "ptst-lora-adapter/1"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ptst", "torch", "transformers", "peft", "safetensors", "sentencepiece", "mistral_common"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def save_adapter(  # type: ignore[no-untyped-def]
    model, directory: Path, settings: TrainSettings, train: dict[str, Any], checkpoints: dict[str, str]
) -> None:
    """Adapter weights (safetensors) first, the metadata file last and atomically: a directory with a metadata file
    is a complete adapter, so an interrupted save is simply redone."""
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / METADATA_FILE
    if meta_path.exists():
        meta_path.unlink()
    model.save_pretrained(str(directory), safe_serialization=True)
    meta = {
        "format": FORMAT,
        **settings.metadata,
        "base_model": settings.model,
        "hyperparameters": settings.hyperparameters.model_dump(mode="json"),
        "batching": settings.batching,
        "dtype": _base_dtype(model),
        "fast_lora_dropout": settings.fast_lora_dropout,
        "train": train,
        "checkpoints": checkpoints,
        "library_versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = directory / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, meta_path)


def _base_dtype(model) -> str:  # type: ignore[no-untyped-def]
    """The frozen base's dtype by name (bfloat16, float32): the numerics the adapter was trained under."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if get_base is not None else model
    return str(getattr(base, "dtype", "unknown")).removeprefix("torch.")


def read_adapter_metadata(directory: Path) -> dict[str, Any] | None:
    p = Path(directory) / METADATA_FILE
    if not p.is_file() or not (Path(directory) / "adapter_model.safetensors").is_file():
        return None
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None



def read_train_log(path: Path) -> list[dict[str, Any]]:
    """The per-step records of `train_log.jsonl` (a torn last line, from a kill mid-write, is dropped)."""
    out = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break
    return out

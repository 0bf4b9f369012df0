"""Every relative path in a spec resolves against the spec file, never the working directory: a spec means the same
files from any folder (`cd examples/cpu-lab && ptst validate align.yaml`). Applied to the raw spec (after `--set`),
before validation, so every later stage sees absolute paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["resolve_paths"]


def _looks_like_model_path(model: str, base: Path) -> bool:
    """A model value that names a file or folder rather than a hub id. Hub ids are `name` or `org/name`; the one
    exception to "relative paths resolve against the spec file" is that such a value stays a hub id unless it
    exists next to the spec file (write `./org/name` to mean a folder that does not exist yet)."""
    return (
        model.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in model
        or model.count("/") >= 2
        or model.lower().endswith(".gguf")  # a model file, never a hub id
        or (base / model).exists()
    )


def _resolved(value: Any, base: Path) -> Any:
    """A relative path string made absolute against `base` (other values, absolute and `~` paths as they are)."""
    if not isinstance(value, str) or not value.strip():
        return value
    p = Path(value).expanduser()
    return value if p.is_absolute() else str(base / p)


def _resolve_dataset(ref: Any, base: Path) -> Any:
    from ptst.data.registry import looks_like_path

    if isinstance(ref, str):
        return _resolved(ref, base) if looks_like_path(ref) else ref
    if isinstance(ref, dict) and "path" in ref:
        return {**ref, "path": _resolved(ref["path"], base)}
    return ref


_PATH_OPTIONS = ("tokenizer", "adapter", "api_key_file")
"""Backend and judge options that name a file or folder."""


def resolve_paths(raw: Any, base: Path) -> Any:
    """Every relative path of a raw spec made absolute against `base`, the spec file's folder: dataset paths,
    `data_dir`, local models (see `_looks_like_model_path` for the hub-id exception), tokenizers, adapters, key files
    and a classifier judge's model. So a spec means the same files from any working directory
    (`cd examples/cpu-lab && ptst validate align.yaml`). Unknown shapes are left for validation to report."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    if "data_dir" in out:
        out["data_dir"] = _resolved(out["data_dir"], base)
    if isinstance(out.get("backends"), list):
        out["backends"] = [_resolve_backend(b, base) for b in out["backends"]]
    if isinstance(out.get("judge"), dict):
        out["judge"] = _resolve_judge(out["judge"], base)
    if isinstance(out.get("judges"), list):
        out["judges"] = [_resolve_judge(j, base) for j in out["judges"]]
    if isinstance(out.get("train"), dict):
        out["train"] = _resolve_train(out["train"], base)
    if isinstance(out.get("eval"), dict):
        ev = dict(out["eval"])
        for key in ("safety", "tasks"):
            if isinstance(ev.get(key), list):
                ev[key] = [_resolve_dataset(r, base) for r in ev[key]]
        out["eval"] = ev
    return out


def _resolve_backend(b: Any, base: Path) -> Any:
    if not isinstance(b, dict):
        return b
    b = dict(b)
    if isinstance(b.get("model"), str) and _looks_like_model_path(b["model"], base):
        b["model"] = _resolved(b["model"], base)
    b.update({k: _resolved(b[k], base) for k in _PATH_OPTIONS if k in b})
    return b


def _resolve_judge(j: Any, base: Path) -> Any:
    if not isinstance(j, dict):
        return j
    j = dict(j)
    j.update({k: _resolved(j[k], base) for k in _PATH_OPTIONS if k in j})
    if j.get("kind") == "classifier" and "model" in j:
        j["model"] = _resolved(j["model"], base)
    return j


def _resolve_train(train: dict[str, Any], base: Path) -> dict[str, Any]:
    train = dict(train)
    if "dataset" in train:
        train["dataset"] = _resolve_dataset(train["dataset"], base)
    if isinstance(train.get("extra"), list):
        train["extra"] = [_resolve_part(x, base) for x in train["extra"]]
    if "safety_mix" in train:
        mix = train["safety_mix"]
        mixes = [_resolve_part(m, base) for m in (mix if isinstance(mix, list) else [mix])]
        train["safety_mix"] = mixes if isinstance(mix, list) else mixes[0]
    return train


def _resolve_part(part: Any, base: Path) -> Any:
    """A safety mix or an extra dataset (`{dataset: ..., n: ...}`) with its dataset resolved; anything else as is."""
    return {**part, "dataset": _resolve_dataset(part["dataset"], base)} if isinstance(part, dict) and "dataset" in part \
        else part

"""Content keys: the identity of every step in the run store, under a versioned schema.

A step (a fine-tuning job, a generation, a judgment) is looked up by the hash of everything that determines its
result, so a re-run finds finished work and never pays for it twice. Keys are built from *named* fields, never from a
whole pydantic dump: adding a defaulted field to `Hyperparameters` or `GenerationConfig` must not orphan every
finished job and response. The rule (schema v1): the fields that existed when v1 was frozen are always hashed (a
field removed later hashes as its frozen v1 default); a field added later is hashed only when it differs from its
default, so adding it is a no-op for existing work. The store records `KEY_SCHEMA` in its meta and refuses another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_encode_str = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str

KEY_SCHEMA = 1  # bump only with a migration; a store of another schema is refused (ptst.store)

# The fields (and their defaults) of the configuration models when key schema v1 was frozen. Never edit these:
# they pin every key ever written.
LORA_V1: Mapping[str, Any] = {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
HYPERPARAMETERS_V1: Mapping[str, Any] = {
    "epochs": 1, "learning_rate": 1e-4, "batch_size": 8, "gradient_accumulation_steps": 1, "lr_scheduler": "linear",
    "warmup_ratio": 0.0, "weight_decay": 0.0, "max_seq_len": 1024, "gradient_checkpointing": False, "save_steps": [],
    "lora": LORA_V1, "learning_rate_multiplier": None, "suffix": None,
}
GENERATION_V1: Mapping[str, Any] = {"max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0, "seed": 0, "batch_size": "auto"}


def content_hash(obj: Any) -> str:
    """A stable hash of JSON-serialisable content."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def pinned_fields(model: BaseModel, v1: Mapping[str, Any]) -> dict[str, Any]:
    """The hashable form of a config model under schema v1 (see the module doc). Nested v1 dicts pin nested models."""
    dump = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, v1_default in v1.items():
        value = getattr(model, name, None)
        if isinstance(v1_default, Mapping) and isinstance(value, BaseModel):
            out[name] = pinned_fields(value, v1_default)
        else:
            out[name] = dump.get(name, v1_default)
    fields = type(model).model_fields
    for name, value in dump.items():
        if name in v1:
            continue
        info = fields.get(name)
        if info is None or info.is_required():
            out[name] = value
            continue
        default = info.get_default(call_default_factory=True)
        default_json = default.model_dump(mode="json") if isinstance(default, BaseModel) else json.loads(
            json.dumps(default, default=_json_default)
        )
        if value != default_json:
            out[name] = value
    return out


def job_key_v1(
    *, backend: str, base_model: str, train_template: str, seed: int, hyperparameters: BaseModel, data_hash: str
) -> str:
    """A fine-tuning job's identity (backends name their external state with it, e.g. OpenAI job metadata)."""
    return content_hash({
        "backend": backend, "base_model": base_model, "train_template": train_template, "seed": seed,
        "hyperparameters": pinned_fields(hyperparameters, HYPERPARAMETERS_V1), "data_hash": data_hash,
    })


def run_key_v1(job_key: str, backend_identity: Mapping[str, Any]) -> str:
    """The store's key of a job: the job plus the backend's result-relevant identity (kind, model, options)."""
    return content_hash({"job": job_key, "backend": dict(backend_identity)})


def base_model_key_v1(backend_identity: Mapping[str, Any]) -> str:
    """The model key of a base model (the reference row), in place of a job's run key."""
    return content_hash({"base": dict(backend_identity)})


def generation_key_v1(
    *, model_key: str, mode: str, system: str | None, user: str, reference: str | None, cfg: BaseModel,
    examples: tuple[tuple[str, str], ...] = (),
) -> str:
    """`content_hash` of {model, mode, system, user, ref, cfg}, its JSON written out field by field (the same bytes,
    tested against `content_hash`): a run computes one per response, so the generic path's cost showed."""
    if examples or not _all_text(model_key, mode, system, user, reference):
        content: dict[str, Any] = {
            "model": model_key, "mode": mode, "system": system, "user": user, "ref": reference,
            "cfg": pinned_fields(cfg, GENERATION_V1),
        }
        if examples:  # added after v1 was frozen: hashed only when present, so existing keys are unchanged
            content["examples"] = [list(x) for x in examples]
        return content_hash(content)
    e = _encode
    return _digest(f'{{"cfg":{_pinned_json(cfg)},"mode":{e(mode)},"model":{e(model_key)},"ref":{e(reference)},'
                   f'"system":{e(system)},"user":{e(user)}}}')


def judgment_key_v1(*, judge: str, version: str, query: str, response: str) -> str:
    """`content_hash` of {judge, version, query, response}, written out as `generation_key_v1` is."""
    if not _all_text(judge, version, query, response):
        return content_hash({"judge": judge, "version": version, "query": query, "response": response})
    e = _encode
    return _digest(f'{{"judge":{e(judge)},"query":{e(query)},"response":{e(response)},"version":{e(version)}}}')


def _encode(s: str | None) -> str:
    """A string (or None) exactly as `content_hash`'s json.dumps writes it inside an object."""
    return "null" if s is None else _encode_str(s)


def _all_text(*values: object) -> bool:
    return all(v is None or type(v) is str for v in values)


def _digest(blob: str) -> str:
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


_PINNED_CACHE: list[tuple[BaseModel, str]] = []  # (the last generation config, its pinned JSON): one per run


def _pinned_json(cfg: BaseModel) -> str:
    cached = _PINNED_CACHE[0] if _PINNED_CACHE else None
    if cached is not None and cached[0] is cfg:  # a frozen model: the same object has the same fields
        return cached[1]
    text = json.dumps(pinned_fields(cfg, GENERATION_V1), sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=_json_default)
    _PINNED_CACHE[:] = [(cfg, text)]
    return text


def cell_key_v1(
    *, backend: str, base_model: str, model_key: str, train_template: str | None, seed: int | None,
    test_template: str, kind: str, dataset: str, metric: str | None,
) -> str:
    return content_hash({
        "backend": backend, "base_model": base_model, "model_key": model_key, "train_template": train_template,
        "seed": seed, "test_template": test_template, "kind": kind, "dataset": dataset, "metric": metric,
    })


def _json_default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not hashable content: {type(o).__name__}")

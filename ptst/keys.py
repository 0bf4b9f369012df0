"""Content keys: the identity of every step in the run store.

A step (a fine-tuning job, a generation, a judgment) is looked up by the hash of everything that determines its
result, so a re-run finds finished work and never pays for it twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def content_hash(obj: Any) -> str:
    """A stable hash of JSON-serialisable content."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


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

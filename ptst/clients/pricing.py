"""OpenAI's published fine-tuning prices and per-example token limits (`ptst/resources/prices.json`).

Prices change: the packaged table says when it was taken, and a spec can override any model's price.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["lookup_model", "price_table"]


@cache
def price_table() -> dict[str, dict[str, Any]]:
    """The packaged price table: per model, USD per 1M training tokens and the per-example token limit."""
    raw = resources.files("ptst.resources").joinpath("prices.json").read_text(encoding="utf-8")
    return dict(json.loads(raw)["models"])


def lookup_model(table: dict[str, Any], model: str) -> Any:
    """Exact model name first, else the longest table key that names its family (`gpt-3.5-turbo` for `-0301`)."""
    if model in table:
        return table[model]
    best = max((k for k in table if model.startswith(k + "-")), key=len, default=None)
    return table[best] if best is not None else None

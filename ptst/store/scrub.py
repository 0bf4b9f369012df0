"""Known secrets: the API keys a spec's backends and judges are configured with, so that none of them is ever
written by ptst (into the store, and from there into reports, samples and exports), even when an endpoint echoes
its key back in a response or an error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Variables that hold keys whatever the spec says (the OpenAI client's default, the Hugging Face token).
DEFAULT_KEY_VARIABLES = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
MIN_SECRET = 8  # shorter values are not keys (a test's "x"), and scrubbing them would mangle ordinary text


def known_secrets(spec: Any, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Every key the spec (its JSON form) can reach: each `api_key_env` variable's value and each `api_key_file`'s
    contents, anywhere in it, plus the default variables. Longest first, so a key that contains another is removed
    whole."""
    names = set(DEFAULT_KEY_VARIABLES)
    paths: set[str] = set()
    stack = [spec]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("api_key_env"), str):
                names.add(value["api_key_env"])
            if isinstance(value.get("api_key_file"), str):
                paths.add(value["api_key_file"])
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    found = {environ.get(n, "").strip() for n in names}
    for p in paths:
        try:
            found.add(Path(p).expanduser().read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            continue  # preflight names an unreadable key file; nothing to scrub from it
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True))

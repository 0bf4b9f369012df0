"""Where backends are found: the built-in ones by kind, and third-party ones through the `ptst.backends`
entry-point group, so a package adds a backend without editing ptst:

    [project.entry-points."ptst.backends"]
    mycloud = "mycloud_ptst:Backend"

Modules are imported only when their kind is used: vendor SDKs (openai, torch) load lazily.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptst.backends.base import FineTuneBackend

ENTRY_POINT_GROUP = "ptst.backends"

# kind -> "module:Class"
BUILTIN: dict[str, str] = {
    "mock": "ptst.backends.mock:Backend",
    "openai": "ptst.backends.openai:Backend",
    "llama2": "ptst.backends.llama2:Backend",
    "mistral": "ptst.backends.mistral:Backend",
    "hf": "ptst.backends.hf_chat:Backend",
}


@lru_cache(maxsize=1)
def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def backend_kinds() -> list[str]:
    return [*BUILTIN, *sorted(_plugins())]


def backend_class(kind: str) -> type[FineTuneBackend]:
    """The backend class for a kind, imported on first use."""
    target = BUILTIN.get(kind) or _plugins().get(kind)
    if target is None:
        raise ValueError(f"unknown backend kind {kind!r} (known: {', '.join(backend_kinds())})")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr or "Backend")
    from ptst.backends.base import FineTuneBackend

    if not (isinstance(cls, type) and issubclass(cls, FineTuneBackend)):
        raise TypeError(f"backend {kind!r} ({target}) is not a FineTuneBackend subclass")
    return cls

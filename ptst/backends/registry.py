"""Where backends are found: `BACKENDS`, the built-in kinds plus third-party ones from the `ptst.backends`
entry-point group, so a package adds a backend without editing ptst:

    [project.entry-points."ptst.backends"]
    mycloud = "mycloud_ptst:Backend"

Modules are imported only when their kind is used (vendor SDKs such as openai and torch load lazily); each kind's
one-line note is registered here so `ptst list backends` imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptst.registry import Registry

if TYPE_CHECKING:
    from ptst.backends.base import FineTuneBackend

ENTRY_POINT_GROUP = "ptst.backends"


def _is_backend(value: object) -> bool:
    from ptst.backends.base import FineTuneBackend

    return isinstance(value, type) and issubclass(value, FineTuneBackend)


BACKENDS: Registry[type[FineTuneBackend]] = Registry(
    "backend kind", group=ENTRY_POINT_GROUP, check=_is_backend, expects="a FineTuneBackend subclass",
    default_attr="Backend",
)
for _kind, _target, _note in (
    ("mock", "ptst.backends.mock:Backend", "deterministic simulation for CI; every result is labelled simulated"),
    ("openai", "ptst.backends.openai:Backend", "OpenAI fine-tuning API and chat completions (extra openai)"),
    ("llama2", "ptst.backends.llama2:Backend", "local Llama 2 chat: LoRA with transformers + peft (extra local)"),
    ("mistral", "ptst.backends.mistral:Backend", "local Mistral Instruct, mistral-common token ids (extra local)"),
    ("hf", "ptst.backends.hf_chat:Backend", "any transformers chat model through its own chat template (extra local)"),
):
    BACKENDS.add(_kind, _target, _note)


def backend_kinds() -> list[str]:
    """Every kind a spec may name: the built-in ones, then the installed plugins by name."""
    return BACKENDS.names()


def backend_class(kind: str) -> type[FineTuneBackend]:
    """The backend class for a kind, imported on first use; a ValueError naming the closest kind when unknown."""
    return BACKENDS[kind]

"""Abstract prompt templates and the registry of the paper's templates.

A template is vendor-neutral: `Template.apply` turns a query into a `Conversation`, which each backend then renders
in its own format. Where the paper worded a template differently for GPT-3.5 (no `Question: ` prefix, the `Be
helpful, ...` system prompt), the difference lives in a per-family variant, so one name means the same experiment on
every vendor. The exact strings and the built-in templates are data (`resources/templates.json`, read into the `BUILTIN`
registry on first use), tested byte for byte against the reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ptst.conversation import Conversation, Mode
from ptst.registry import Registry, UnknownName

Family = Literal["llama2", "mistral", "openai", "mock"]
FAMILIES: tuple[str, ...] = ("llama2", "mistral", "openai", "mock")
QUERY_SLOT = "{query}"
# The Llama 2 system block (`prompt_utils.py` of the paper's code, lines 1-2), which the paper's shared Llama/Mistral
# inference code also wrote for Mistral: `@inst-sys` templates put it inside Mistral's user turn.
SYS_BLOCK = ("<<SYS>>\n", "\n<</SYS>>\n\n")
INST_SYS = "@inst-sys"


@cache
def strings() -> dict[str, str]:
    """The paper's fixed strings (system prompts, Alpaca preamble), loaded from the packaged data file."""
    raw = resources.files("ptst.resources").joinpath("templates.json").read_text(encoding="utf-8")
    return dict(json.loads(raw)["strings"])


class TemplateVariant(BaseModel):
    """How a template reads on one backend family, where it differs from the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    system: str | None = None
    user: str


class ExampleTurn(BaseModel):
    """A demonstration shown before the query: one user turn and the assistant's reply, both literal text."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    user: str = Field(min_length=1)
    assistant: str = Field(min_length=1)


class Template(BaseModel):
    """An abstract template: mode, optional system prompt and a user format with a `{query}` slot.

    `examples` are (user, assistant) turns placed before the query (In-Context Defense's refusal demonstration);
    `suffix` is text appended after the formatted user turn (Self-Reminder's reminder). Both are literal: no slot is
    filled in them, and the example turns do not go through the user format.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    mode: Mode = "chat"
    system: str | None = None
    user: str = QUERY_SLOT
    safety: bool = Field(default=False, description="carries a safety system prompt (marks PTST cells in reports)")
    description: str = ""
    variants: dict[str, TemplateVariant] = Field(default_factory=dict)
    examples: tuple[ExampleTurn, ...] = ()
    suffix: str = ""

    @field_validator("user")
    @classmethod
    def _has_query_slot(cls, v: str) -> str:
        if QUERY_SLOT not in v:
            raise ValueError(f"user format must contain the {QUERY_SLOT} slot")
        return v

    @model_validator(mode="after")
    def _text_has_no_system(self) -> Template:
        if self.mode == "text" and self.system is not None:
            raise ValueError("a text-mode template has no system prompt; put the text into 'user'")
        if self.mode == "text" and self.examples:
            raise ValueError("example turns need a chat template (mode: chat); a text template writes them into 'user'")
        for fam in self.variants:
            if fam not in FAMILIES:
                raise ValueError(f"unknown backend family {fam!r} in variants (known: {', '.join(FAMILIES)})")
        return self

    def for_family(self, family: str) -> TemplateVariant:
        return self.variants.get(family) or TemplateVariant(system=self.system, user=self.user)

    def apply(
        self, query: str, family: str, answer: str | None = None, reference: str | None = None
    ) -> Conversation:
        v = self.for_family(family)
        # str.replace, not str.format: queries and answers are full of braces (code, LaTeX).
        user = v.user.replace(QUERY_SLOT, query) + self.suffix
        turns = tuple((e.user, e.assistant) for e in self.examples)
        return Conversation(self.mode, user, v.system, answer, query, reference, self.name, turns)


class _TemplateFile(BaseModel):
    """`resources/templates.json`: the paper's strings, and the built-in templates that use them by `${NAME}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    strings: dict[str, str]
    inst_sys: str = Field(description="the rule that derives the @inst-sys templates (documentation)")
    templates: tuple[Template, ...]


_STRING_REF = re.compile(r"\$\{([A-Z0-9_]+)\}")


def _fill(node: Any, s: dict[str, str]) -> Any:
    """`node` with every `${NAME}` replaced by the paper's string NAME (an unknown name is a KeyError: a bug)."""
    if isinstance(node, str):
        return _STRING_REF.sub(lambda m: s[m.group(1)], node)
    if isinstance(node, list):
        return [_fill(x, s) for x in node]
    if isinstance(node, dict):
        return {k: _fill(v, s) for k, v in node.items()}
    return node


def _builtin() -> list[tuple[str, Template]]:
    """The built-in templates from the data file, each chat template with a system prompt followed (after all of
    them) by its `@inst-sys` twin."""
    raw = json.loads(resources.files("ptst.resources").joinpath("templates.json").read_text(encoding="utf-8"))
    raw["templates"] = _fill(raw["templates"], raw["strings"])
    ts = list(_TemplateFile.model_validate(raw).templates)
    ts += [inst_sys(t) for t in ts if t.mode == "chat" and t.system]
    return [(t.name, t) for t in ts]


def inst_sys(t: Template) -> Template:
    """`t` as the paper's code rendered it on Mistral: its inference code (`inference.py`, shared by Llama and
    Mistral) wrote every template as Llama 2 text, so the system prompt became a `<<SYS>>` block inside `[INST]`.
    On Mistral the block is written into the user turn (mistral-common then renders `[INST] <<SYS>>...`); on every
    other family the template is unchanged (Llama 2 renders the same block itself)."""
    variants = {fam: t.for_family(fam) for fam in FAMILIES}
    m = variants["mistral"]
    if m.system is not None:
        variants["mistral"] = TemplateVariant(system=None, user=SYS_BLOCK[0] + m.system + SYS_BLOCK[1] + m.user)
    return t.model_copy(update={
        "name": t.name + INST_SYS, "variants": variants,
        "description": t.description + "; Mistral: <<SYS>> in [INST] as the paper's code",
    })


BUILTIN: Registry[Template] = Registry("template", load=_builtin, listing="ptst list templates")
"""The built-in templates by name, read from `resources/templates.json` on first use."""


class UnknownTemplate(UnknownName):
    def __init__(self, name: str, known: list[str]):
        super().__init__("template", name, known, listing="ptst list templates")


def resolve(name: str, custom: Mapping[str, Template] | None = None) -> Template:
    """A template by name: the spec's own (`custom`) or a built-in one; UnknownTemplate with a did-you-mean."""
    if custom and name in custom:
        return custom[name]
    if name in BUILTIN:
        return BUILTIN[name]
    raise UnknownTemplate(name, sorted({*BUILTIN, *(custom or {})}))

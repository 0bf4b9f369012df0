"""Abstract prompt templates and the registry of the paper's templates.

A template is vendor-neutral: `Template.apply` turns a query into a `Conversation`, which each backend then renders
in its own format. Where the paper worded a template differently for GPT-3.5 (no `Question: ` prefix, the `Be
helpful, ...` system prompt), the difference lives in a per-family variant, so one name means the same experiment on
every vendor. The exact strings are data (`resources/templates.json`), tested byte for byte against the reference.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ptst.conversation import Conversation, Mode

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


def _builtin() -> dict[str, Template]:
    s = strings()
    q = "Question: " + QUERY_SLOT
    alpaca_user = "### Instruction:\n" + QUERY_SLOT + "\n\n### Response:\n"

    def gpt(system: str, user: str = QUERY_SLOT) -> dict[str, TemplateVariant]:
        # The paper's GPT-3.5 code always sends a system message (possibly empty) and no "Question: " prefix.
        return {"openai": TemplateVariant(system=system, user=user)}

    ts = [
        Template(name="text:vanilla", mode="text", user=q + "\nAnswer:", description="TV: plain text, no chat format"),
        Template(
            name="text:alpaca", mode="text", user=s["ALPACA_PREAMBLE"] + "\n\n" + alpaca_user,
            description="TA: Alpaca prompt as plain text",
        ),
        Template(name="chat:vanilla", user=q, description="CV: chat format, no system prompt", variants=gpt("")),
        Template(
            name="chat:alpaca", system=s["ALPACA_PREAMBLE"], user=alpaca_user,
            description="CA: Alpaca preamble as the system prompt", variants=gpt(s["ALPACA_PREAMBLE"], alpaca_user),
        ),
        Template(
            name="chat:llama", system=s["LLAMA_SYSTEM"], user=q, safety=True,
            description="CL: Llama 2's default safety system prompt", variants=gpt(s["GPT_LLAMA_SYSTEM"]),
        ),
        Template(
            name="chat:llama-short", system=s["LLAMA_SYSTEM_SHORT"], user=q, safety=True,
            description="Llama 2's safety prompt, first two sentences", variants=gpt(s["GPT_LLAMA_SYSTEM_SHORT"]),
        ),
        Template(
            name="chat:mpt", system=s["MPT_SYSTEM"], user=q,
            description="MPT's helpful-and-honest system prompt (no safety wording)", variants=gpt(s["MPT_SYSTEM"]),
        ),
        Template(
            name="chat:mistral", system=s["MISTRAL_SYSTEM"], user=q, safety=True,
            description="Mistral AI's guardrail system prompt", variants=gpt(s["MISTRAL_SYSTEM"]),
        ),
        Template(
            name="chat:safe", system=s["LLAMA_SYSTEM"], user=q, safety=True,
            description="each vendor's own safety prompt (Llama 2: chat:llama, Mistral: chat:mistral, GPT: Be helpful...)",
            variants={
                "llama2": TemplateVariant(system=s["LLAMA_SYSTEM"], user=q),
                "mistral": TemplateVariant(system=s["MISTRAL_SYSTEM"], user=q),
                "openai": TemplateVariant(system=s["GPT_LLAMA_SYSTEM"], user=QUERY_SLOT),
            },
        ),
    ]
    ts += [
        # Self-Reminder as its source assembles it (yjw1029/Self-Reminder a24d334, src/jailbreak_w_defense.py:20,
        # 35-37): `{prefix}\n{query}\n Remember, ...!` is the user turn; no system prompt, no `Question: `.
        Template(
            name="chat:self-reminder", user=s["SELF_REMINDER_PREFIX"] + "\n" + QUERY_SLOT, suffix=s["SELF_REMINDER_SUFFIX"],
            safety=True, description="Self-Reminder (Xie et al. 2023): the query between a responsibility preamble and "
            "a reminder, in the user turn", variants=gpt("", s["SELF_REMINDER_PREFIX"] + "\n" + QUERY_SLOT),
        ),
        Template(
            name="chat:icd", user=q, examples=(ExampleTurn(user=s["ICD_USER"], assistant=s["ICD_ASSISTANT"]),),
            safety=True, description="In-Context Defense (Wei et al. 2023): one refusal demonstration before the query",
            variants=gpt(""),
        ),
    ]
    ts += [inst_sys(t) for t in ts if t.mode == "chat" and t.system]
    return {t.name: t for t in ts}


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


BUILTIN: dict[str, Template] = _builtin()


class UnknownTemplate(KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        self.message = f"unknown template {name!r}" + (f" — did you mean {close[0]!r}?" if close else "")
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def resolve(name: str, custom: dict[str, Template] | None = None) -> Template:
    table = {**BUILTIN, **(custom or {})}
    try:
        return table[name]
    except KeyError:
        raise UnknownTemplate(name, sorted(table)) from None

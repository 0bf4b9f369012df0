"""The neutral form a template produces, before any backend sees it.

A `Conversation` is what every renderer consumes: the system prompt (or none), the user turn, and, for training,
the assistant's answer. Keeping it vendor-neutral is what lets one spec drive OpenAI, Llama 2 and Mistral alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["chat", "text"]


@dataclass(frozen=True, slots=True)
class Conversation:
    """One example after a template was applied.

    `mode="chat"`: `system` (None means *no* system message, "" an empty one) and the `user` turn.
    `mode="text"`: `user` holds the whole prompt text; there is no system turn.
    `answer` is the assistant turn of a training example (None at evaluation time).
    `query` is the raw query: the judge sees it, never the templated prompt.
    `reference` is the gold answer of a task item, used only for scoring; no renderer ever shows it to a model.
    `examples` are (user, assistant) turns shown before the user turn (few-shot demonstrations such as In-Context
    Defense's refusal); every chat renderer places them as earlier turns of the same conversation, and training
    never puts loss on them.
    """

    mode: Mode
    user: str
    system: str | None = None
    answer: str | None = None
    query: str = ""
    reference: str | None = None
    template: str = ""
    examples: tuple[tuple[str, str], ...] = ()

    def without_answer(self) -> Conversation:
        return Conversation(
            self.mode, self.user, self.system, None, self.query, self.reference, self.template, self.examples
        )

"""The rendering contract every local training example must pass.

A prompt is `BOS + ids`; a training example is the prompt's ids followed by the answer's ids and EOS, with labels
-100 on the prompt. Anything else (prompt not a token prefix of its training form, doubled BOS, missing EOS) is a
hard `TrainingFormError`: a silently shifted loss mask would train a different model than the one the paper
describes.
"""

from __future__ import annotations

from collections.abc import Sequence

from ptst.conversation import Conversation
from ptst.errors import DataError

IGNORE_INDEX = -100


class TrainingFormError(DataError):
    """A training example whose token ids break the prompt/answer contract (names the template and query)."""


def where(conv: Conversation) -> str:
    """A short locator for error messages: which template and which row."""
    q = conv.query or conv.user
    q = q if len(q) <= 48 else q[:45] + "..."
    return f"template {conv.template or '(none)'}, query {q!r}"


def clean_answer(conv: Conversation) -> str:
    """The answer as trained on: stripped (as Meta's reference encoder does), and never empty."""
    answer = (conv.answer or "").strip()
    if not answer:
        raise TrainingFormError(f"{where(conv)}: the training answer is empty; drop the row or fill its answer field")
    return answer


def text_separator(prompt: str) -> str:
    """What joins a text-mode prompt and its answer: nothing after whitespace (`...### Response:\\n`), else a space
    (`...Answer: 72`). The space is what SentencePiece turns into the answer's leading `▁`, so the prompt's own tokens
    stay a prefix of the training tokens (checked for every example)."""
    return "" if prompt[-1:].isspace() else " "


def check_prompt_ids(ids: Sequence[int], bos_id: int, what: str) -> None:
    if not ids or ids[0] != bos_id:
        raise TrainingFormError(f"{what}: the prompt's token ids do not start with BOS ({bos_id})")
    if len(ids) > 1 and ids[1] == bos_id:
        raise TrainingFormError(
            f"{what}: BOS is doubled at the start of the prompt; remove a literal BOS from the text"
        )


def supervised_labels(
    prompt_ids: Sequence[int], input_ids: Sequence[int], *, bos_id: int, eos_id: int, what: str
) -> list[int]:
    """Labels for a training example: -100 on the prompt, the token ids on the answer and its EOS.

    Raises `TrainingFormError` unless the example is exactly `prompt + answer + EOS` at the token level.
    """
    check_prompt_ids(prompt_ids, bos_id, what)
    check_prompt_ids(input_ids, bos_id, what)
    if input_ids[-1] != eos_id:
        raise TrainingFormError(f"{what}: the training form does not end with EOS ({eos_id})")
    n = len(prompt_ids)
    if len(input_ids) <= n + 1 or list(input_ids[:n]) != list(prompt_ids):
        raise TrainingFormError(
            f"{what}: the prompt's tokens are not a prefix of the training tokens (the answer boundary re-tokenises "
            "the prompt's end); end the template's text with a newline or a non-space character"
        )
    return [IGNORE_INDEX] * n + list(input_ids[n:])




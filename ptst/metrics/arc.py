"""ARC (AI2 Reasoning Challenge) as a zero-shot generation task: prompt formatting and answer-letter accuracy.

The paper scores OpenOrca fine-tunes on ARC-Easy and ARC-Challenge; ptst evaluates chat models by generation, so
an item becomes one prompt and the model answers in words. The format below is **ptst's own zero-shot generation
format** (no published prompt of the paper was found to copy); it is a variant, not lm-evaluation-harness's
`arc_easy`/`arc_challenge` (those rank the choices by log-likelihood and never generate):

    {question}

    A. {choice 1}
    B. {choice 2}
    ...

    Answer with the letter of the correct choice.

Choices are lettered A, B, C... by position, whatever the dataset's labels: about 1% of ARC items are labelled
1-4 instead of A-D, and one letter scheme keeps the extractor simple. The answer key is mapped to the letter of its
position the same way, so the reference handed to the metric is always a letter.
"""

from __future__ import annotations

import re
import string
from typing import Any

from ptst.errors import DataError

LETTERS = string.ascii_uppercase
ARC_INSTRUCTION = "Answer with the letter of the correct choice."


def format_arc_prompt(question: str, choices: list[str]) -> str:
    """The prompt for one ARC item in ptst's zero-shot format (see the module docstring)."""
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"an ARC item needs 2 to {len(LETTERS)} choices, got {len(choices)}")
    lines = [f"{LETTERS[i]}. {text.strip()}" for i, text in enumerate(choices)]
    return f"{question.strip()}\n\n" + "\n".join(lines) + f"\n\n{ARC_INSTRUCTION}"


def arc_row(where: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Fold an `allenai/ai2_arc` row's choices into its question, and its answerKey into a position letter.

    Input schema: `id`, `question`, `choices: {text: [...], label: [...]}`, `answerKey` (one of the labels).
    Output: the same record with `question` replaced by the formatted prompt and `answerKey` by a letter; the
    original question stays available as `question_text` (kept in Example.meta). A malformed row stops the load
    with its location, like any other bad row.
    """
    choices = rec.get("choices")
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list):
        raise DataError(f"{where}: ARC row needs choices {{text: [...], label: [...]}}; got {type(choices).__name__}")
    texts, labels = choices["text"], choices.get("label")
    if not isinstance(labels, list) or len(labels) != len(texts):
        raise DataError(f"{where}: ARC choices need one label per text ({len(texts)} texts, labels {labels!r})")
    if not all(isinstance(t, str) and t.strip() for t in texts) or not 2 <= len(texts) <= len(LETTERS):
        raise DataError(f"{where}: ARC choices need 2 to {len(LETTERS)} non-empty texts; got {texts!r}")
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: ARC question is missing or empty; fill it or remove the row")
    labels = [str(label).strip() for label in labels]
    key = rec.get("answerKey")
    key = None if key is None else str(key).strip()
    if key is not None and key not in labels:
        raise DataError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
    out = dict(rec)
    out["question_text"] = question
    out["question"] = format_arc_prompt(question, texts)
    out["answerKey"] = None if key is None else LETTERS[labels.index(key)]
    return out


# "answer is (B)", "Answer: B", "the correct answer is: **C**" — the last such statement is the final answer.
_STATED = re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z0-9])", re.IGNORECASE)
# A response that opens with a letter: "B", "B.", "(B)", "B) ...", "B: ..." — but not the article in "A plant...".
_LEADING = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])(?:[.):]|\s*$))")


def extract_arc_letter(response: str) -> str | None:
    """The choice letter a response gives, or None when it gives none (scored wrong).

    ptst's own rule, for the prompt format above: markdown emphasis (`*`) is ignored; an explicit "answer is X" /
    "answer: X" wins (the last one, as models restate before concluding); else a response that *starts* with a
    letter followed by `.`, `)`, `:` or nothing. The letter must be a capital, so "the answer is a mineral" does
    not read as choice A.
    """
    text = response.replace("*", "")
    stated = [m for m in _STATED.finditer(text) if m.group(1).isupper()]
    if stated:
        return stated[-1].group(1)
    m = _LEADING.match(text)
    if m:
        return m.group(1) or m.group(2)
    return None


def arc_letter_accuracy(response: str, reference_letter: str) -> bool:
    """True when the response's letter (`extract_arc_letter`) is the reference letter (from `arc_row`)."""
    ref = reference_letter.strip().upper()
    if len(ref) != 1 or ref not in LETTERS:
        raise DataError(
            f"ARC reference {reference_letter!r} is not a choice letter; load ARC through the registry (arc-easy, "
            "arc-challenge) so answerKey is mapped to a letter"
        )
    return extract_arc_letter(response) == ref

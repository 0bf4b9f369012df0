"""GSM8K scoring: the lm-evaluation-harness `gsm8k` task's two filters, and ptst's older lenient rule.

The harness (EleutherAI/lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml, task version 3.0) scores one
generation per question with `exact_match` after one of two filters, reported side by side:

- strict-match: the number after the *first* `#### ` (exactly one space), pattern `#### (\\-?[0-9\\.\\,]+)`.
- flexible-extract: the *last* match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, taking its first non-empty group.
- Either filter yields "[invalid]" when nothing matches; `take_first` keeps the first of the (single) generation.
- exact_match then deletes, in order, the regexes `,` `\\$` `(?s).*#### ` `\\.$` from prediction *and* reference
  (the reference is the whole `answer` field, so the last deletes the worked solution), lower-cases both
  (ignore_case), keeps punctuation, and compares the strings. No numeric parsing: "18.00" != "18", "5.." != "5".
- Generation stops at the first of "Question:", "</s>", "<|im_end|>" (the yaml's `until`); ptst responses may run
  past those, so the harness scorers cut there first, making the score what the harness would have computed.

`gsm8k_exact_match` (metric `gsm8k_lenient`; `exact_match` is its older name) is ptst's earlier *lenient* rule: it
parses numbers, so 18.00, $18 and 18 are equal, and it falls back to the last number in the text. It is not the
harness's exact_match: `gsm8k_lenient` names it for what it is; `exact_match` stays for existing results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from ptst.errors import DataError

# ------------------------------------------------------------------------------------- lm-evaluation-harness rules

INVALID = "[invalid]"
"""The harness's regex-filter fallback when a response has no match; never equal to a normalised reference."""

GSM8K_UNTIL: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>")
"""The yaml's generation stop strings."""

STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$"))
"""exact_match's `regexes_to_ignore`, applied in this order."""


def cut_at_stop(text: str, until: Sequence[str] = GSM8K_UNTIL) -> str:
    """The text before the first stop string, as the harness's generation would have returned it."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text


def gsm8k_strict_filter(response: str) -> str:
    """strict-match filter: the number right after the first `#### ` in the response, else "[invalid]"."""
    m = STRICT_PATTERN.search(response)
    return m.group(1).strip() if m else INVALID


def gsm8k_flexible_filter(response: str) -> str:
    """flexible-extract filter: the last number-like run (`$`, `,` and `.` included), else "[invalid]".

    Runs of two or more of `-?[$0-9.,]` win over single digits in the alternation, so "1,234." is taken whole
    (and later normalised to "1234"); a lone "..." or "$," is a match too, exactly as in the harness.
    """
    matches = list(FLEXIBLE_PATTERN.finditer(response))
    if not matches:
        return INVALID
    last = matches[-1]
    return (last.group(1) or last.group(2) or INVALID).strip()


def gsm8k_harness_normalise(text: str) -> str:
    """exact_match's normalisation for gsm8k: delete `,`, `$`, everything up to the last `#### `, one trailing
    `.`, then lower-case. Applied to the extracted prediction and to the whole reference `answer` field."""
    for pattern in IGNORE_PATTERNS:
        text = pattern.sub("", text)
    return text.lower()


def gsm8k_strict_match(response: str, reference_answer_field: str) -> bool:
    """The harness's gsm8k `exact_match,strict-match` for one response."""
    got = gsm8k_strict_filter(cut_at_stop(response))
    return gsm8k_harness_normalise(got) == gsm8k_harness_normalise(reference_answer_field)


def gsm8k_flexible_extract(response: str, reference_answer_field: str) -> bool:
    """The harness's gsm8k `exact_match,flexible-extract` for one response."""
    got = gsm8k_flexible_filter(cut_at_stop(response))
    return gsm8k_harness_normalise(got) == gsm8k_harness_normalise(reference_answer_field)


# -------------------------------------------------------------------------------------- ptst's lenient rule (old)

# A number as people and models write it: optional sign (not a hyphen inside "5-3" or "x-2"), optional `$`,
# thousands separators only in groups of three (so "3,4" is two numbers, not 34), optional decimals.
_NUMBER = re.compile(r"(?:(?<![0-9A-Za-z])-)?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _normalise(number: str) -> str | None:
    """Canonical form so `$1,080.00`, `1080.` and `1080` compare equal: no `$`, commas, sign of zero or `.0`."""
    s = number.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return _normalise(found[-1]) if found else None


def extract_gsm8k_answer(text: str) -> str | None:
    """ptst's lenient reading: the first number after the last `####`, else the last number in the text.

    GSM8K fine-tuning teaches the `#### N` ending, so it wins when present; base models rarely write it, and then
    the last number is the conventional reading. A `####` with no number after it falls back to the whole text.
    """
    marker = text.rfind("####")
    if marker >= 0:
        m = _NUMBER.search(text, marker + 4)
        if m:
            return _normalise(m.group(0))
    return _last_number(text)


def gsm8k_reference(answer_field: str) -> str:
    """The gold number of a GSM8K `answer` field (worked solution ending `#### N`), normalised the lenient way.

    A bare number is accepted too, for user datasets that store only the final answer.
    """
    marker = answer_field.rfind("####")
    tail = answer_field[marker + 4 :] if marker >= 0 else answer_field
    m = _NUMBER.search(tail)
    if m is None or (marker < 0 and m.group(0).strip() != answer_field.strip()):
        shown = answer_field if len(answer_field) <= 60 else answer_field[:57] + "..."
        raise DataError(
            f"GSM8K reference {shown!r} has no '#### N' final answer; map answer_field to the dataset's answer column"
        )
    normalised = _normalise(m.group(0))
    assert normalised is not None  # the regex only matches parseable numbers
    return normalised


def gsm8k_exact_match(response: str, reference_answer_field: str) -> bool:
    """ptst's lenient GSM8K rule (metric `exact_match`): numeric equality of the final numbers (18.00 == $18).

    More forgiving than the harness's strict-match/flexible-extract; kept so results scored before those existed
    stay comparable. Prefer `gsm8k_strict_match` / `gsm8k_flexible_extract` for numbers comparable to published ones.
    """
    got = extract_gsm8k_answer(response)
    return got is not None and got == gsm8k_reference(reference_answer_field)

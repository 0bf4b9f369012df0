"""GSM8K under lm-evaluation-harness's rules (gsm8k.yaml v3.0): strict-match and flexible-extract side by side.

Every expected value below was worked out by hand from the yaml: the filter's regex (first `#### ` match for strict,
last match with its first non-empty group for flexible, "[invalid]" when none), then exact_match's deletions of
`,` `$` `(?s).*#### ` and one trailing `.` from both sides, lower-casing, and a plain string comparison.
"""

from __future__ import annotations

import json

import pytest

from ptst.metrics import (
    TASK_METRICS,
    cut_at_stop,
    gsm8k_exact_match,
    gsm8k_flexible_extract,
    gsm8k_flexible_filter,
    gsm8k_harness_normalise,
    gsm8k_strict_filter,
    gsm8k_strict_match,
)

# A worked solution in GSM8K's format (written for this test): the calculator annotations, then "#### N".
REF_10 = "Tom buys 3 packs of 4 pens: 3 * 4 = <<3*4=12>>12 pens.\nHe gives away 2, so 12 - 2 = <<12-2=10>>10.\n#### 10"
REF_1234 = "The farm has 1,000 + 234 = <<1000+234=1234>>1,234 hens.\n#### 1,234"
REF_NEG = "The temperature changes by 4 - 7 = <<4-7=-3>>-3 degrees.\n#### -3"


@pytest.mark.parametrize(
    ("response", "strict", "flexible"),
    [
        ("#### 42", "42", "42"),
        ("He has 3 + 4 = 7 apples.\n#### 7", "7", "7"),
        ("#### 5\nor maybe\n#### 7", "5", "7"),  # strict takes the first ####; flexible the last number
        ("####42", "[invalid]", "42"),  # strict needs exactly one space after ####
        ("#### $18", "[invalid]", "$18"),  # `$` is not in strict's character class
        ("#### -3.5", "-3.5", "-3.5"),
        ("#### 1,234.", "1,234.", "1,234."),
        ("The answer is 1,234.", "[invalid]", "1,234."),  # runs of [$0-9.,] are taken whole
        ("$5", "[invalid]", "$5"),
        ("She had 3 apples, bought 4 more, so 7.", "[invalid]", "7."),  # ", " is one char: no match
        ("It fell to -5 degrees", "[invalid]", "-5"),
        ("1,2 and 3,4", "[invalid]", "3,4"),
        ("Wait... the answer is 5", "[invalid]", "5"),  # "..." matches too, but it is not the last
        ("The answer is 5...", "[invalid]", "5..."),
        ("", "[invalid]", "[invalid]"),
        ("I cannot help with that.", "[invalid]", "[invalid]"),
    ],
)
def test_filters(response: str, strict: str, flexible: str) -> None:
    assert gsm8k_strict_filter(response) == strict
    assert gsm8k_flexible_filter(response) == flexible


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("1,234.", "1234"),
        ("$5", "5"),
        ("5...", "5.."),  # only one trailing period goes
        ("18.00", "18.00"),  # no numeric parsing
        (REF_10, "10"),  # the worked solution goes up to the last "#### "
        ("#### 5 then #### 6", "6"),
        (REF_1234, "1234"),
        ("[invalid]", "[invalid]"),
        ("ABC", "abc"),  # ignore_case
    ],
)
def test_harness_normalisation(text: str, normalised: str) -> None:
    assert gsm8k_harness_normalise(text) == normalised


@pytest.mark.parametrize(
    ("response", "reference", "strict", "flexible", "lenient"),
    [
        ("#### 10", REF_10, True, True, True),
        ("12 - 2 = 10 pens left.\n#### 10", REF_10, True, True, True),
        ("#### 10.", REF_10, True, True, True),  # one trailing period is ignored
        ("#### 10.0", REF_10, False, False, True),  # strings, not numbers: "10.0" != "10"
        ("The answer is 10.", REF_10, False, True, True),
        ("The answer is $10.00", REF_10, False, False, True),
        ("#### $10", REF_10, False, True, True),
        ("####10", REF_10, False, True, True),
        ("#### 11", REF_10, False, False, False),
        ("#### 1234", REF_1234, True, True, True),  # the reference's comma is deleted too
        ("The total is 1,234 hens.", REF_1234, False, True, True),
        ("#### -3", REF_NEG, True, True, True),
        ("It drops 3 degrees, so -3", REF_NEG, False, True, True),
        ("", REF_10, False, False, False),
        ("I cannot help with that.", REF_10, False, False, False),
        # The harness stops generating at "Question:", so a rambling next question never counts.
        ("#### 10\n\nQuestion: Ann has 99 pens. #### 99", REF_10, True, True, False),
    ],
)
def test_scoring_against_a_reference(response: str, reference: str, strict: bool, flexible: bool, lenient: bool):
    assert gsm8k_strict_match(response, reference) is strict
    assert gsm8k_flexible_extract(response, reference) is flexible
    assert gsm8k_exact_match(response, reference) is lenient  # ptst's older rule, kept as `exact_match`


def test_cut_at_stop_uses_the_yaml_until_strings() -> None:
    assert cut_at_stop("a 1</s>b 2") == "a 1"
    assert cut_at_stop("a 1<|im_end|>Question: 3") == "a 1"
    assert cut_at_stop("x Question: y Question: z") == "x "
    assert cut_at_stop("nothing to cut") == "nothing to cut"


def test_task_metrics_score_a_cell_with_a_wilson_interval() -> None:
    responses = ["#### 10", "The answer is 10.", "#### 11", ""]
    strict = TASK_METRICS["gsm8k_strict_match"].score(responses, [REF_10] * 4)
    flexible = TASK_METRICS["gsm8k_flexible_extract"].score(responses, [REF_10] * 4)
    assert (strict.k, strict.n, strict.value) == (1, 4, 0.25)
    assert (flexible.k, flexible.n, flexible.value) == (2, 4, 0.5)
    assert strict.ci95 is not None and strict.ci95[0] < 0.25 < strict.ci95[1]
    assert TASK_METRICS["gsm8k_strict_match"]("#### 10", REF_10) is True  # per-item call, as before


def test_real_gsm8k_answers_score_themselves(shared) -> None:
    """The reference answer field itself is a perfect response under both filters; a shifted one is not."""
    rows = [json.loads(line) for line in (shared / "data/gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [r["answer"] for r in rows]
    assert len(answers) == 1319
    assert all(gsm8k_strict_match(a, a) for a in answers)
    assert all(gsm8k_flexible_extract(a, a) for a in answers)
    # A model that writes only "#### N" with the final answer as GSM8K prints it (commas included) is right too.
    assert all(gsm8k_strict_match("#### " + a.rsplit("#### ", 1)[1], a) for a in answers)
    shifted = list(zip(answers, answers[1:] + answers[:1], strict=True))
    assert sum(gsm8k_strict_match(a, b) for a, b in shifted) < 30  # only coincidentally equal answers
    # Both sides normalise to plain integers: GSM8K's answers have no decimals, 14 have thousands commas.
    finals = [gsm8k_harness_normalise(a) for a in answers]
    assert all(f.lstrip("-").isdigit() for f in finals)


# --------------------------------------------------------------------------------------------------------------
# The harness's scoring, re-derived here from lm-evaluation-harness's gsm8k.yaml (task version 3.0) and its filter
# and metric semantics, independently of ptst.metrics.gsm8k: generation stops at the earliest `until` string; the
# `regex` filter runs `findall`, takes the match at `group_select` (0: first, -1: last), takes the first non-empty
# group of a tuple, strips it, and falls back to "[invalid]"; `take_first`; then HF `exact_match` with
# `regexes_to_ignore` applied by `re.sub` in order to predictions and references, `ignore_case`, string equality.
# --------------------------------------------------------------------------------------------------------------
HARNESS_UNTIL = ["Question:", "</s>", "<|im_end|>"]
HARNESS_FILTERS = {
    "gsm8k_strict_match": (r"#### (\-?[0-9\.\,]+)", 0),
    "gsm8k_flexible_extract": (r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
}
HARNESS_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def _harness_verdict(metric: str, response: str, reference: str) -> bool:
    import re

    cuts = [response.find(s) for s in HARNESS_UNTIL if s in response]
    generated = response[: min(cuts)] if cuts else response
    pattern, group_select = HARNESS_FILTERS[metric]
    found = re.compile(pattern).findall(generated)
    if found:
        match = found[group_select]
        if isinstance(match, tuple):
            match = next((m for m in match if m), "[invalid]")
        filtered = match.strip()
    else:
        filtered = "[invalid]"
    pred, ref = filtered, reference
    for r in HARNESS_IGNORE:
        pred, ref = re.sub(r, "", pred), re.sub(r, "", ref)
    return pred.lower() == ref.lower()


def _variants(answer: str, other: str) -> list[str]:
    """26 responses built from one GSM8K answer (and another row's), covering what the filters disagree on."""
    solution, final = answer.rsplit("\n#### ", 1)
    plain = final.replace(",", "")
    other_final = other.rsplit("#### ", 1)[1]
    return [
        answer, "#### " + final, "####" + final, "#### $" + final, final + ".", f"The answer is {final}.",
        solution, f"{solution}\nSo the answer is {final}", answer + "\nQuestion: What is 1+1?\n#### 2",
        answer.replace(",", ""), f"#### {final}\n#### 0", "#### " + other_final, other, "I cannot help with that.", "",
        final + "...", "-" + plain, f"#### {plain}.00", "$" + final, f"{int(plain):,}", f"It is {plain}, not {other_final}",
        f"#### {final}</s>then 5", f"Answer: {final}<|im_end|>\n#### 99", f"({final})", f"{final}, and 3",
        answer.replace("####", "###"),
    ]


def test_agreement_with_the_harness_on_real_gsm8k_answers(shared) -> None:
    """Every (response, reference, filter) verdict equals the re-derived harness's: 1,319 test answers x 26
    responses x 2 filters = 68,588 pairs."""
    rows = [json.loads(line) for line in (shared / "data/gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [r["answer"] for r in rows]
    n = agree = right = 0
    disagreements = []
    for i, ref in enumerate(answers):
        for response in _variants(ref, answers[(i + 1) % len(answers)]):
            for metric in HARNESS_FILTERS:
                n += 1
                ours, theirs = TASK_METRICS[metric](response, ref), _harness_verdict(metric, response, ref)
                agree += ours == theirs
                right += theirs
                if ours != theirs and len(disagreements) < 5:
                    disagreements.append((metric, response, ref, ours, theirs))
    assert n == 68_588
    assert agree == n, disagreements
    assert 0.3 * n < right < 0.7 * n  # both verdicts are common: the agreement is not on a trivial case

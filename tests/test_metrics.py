"""Metrics: Wilson intervals against published values, GSM8K answer extraction, exact McNemar p-values."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from ptst.errors import DataError
from ptst.metrics import (
    TASK_METRICS,
    discordant,
    extract_gsm8k_answer,
    gsm8k_exact_match,
    gsm8k_reference,
    mcnemar_p,
    mean,
    round_ci,
    wilson_interval,
)

Z = 1.959963984540054


def _wilson_closed_form(k: int, n: int) -> tuple[float, float]:
    """Wilson's interval in its other algebraic form, (2k + z² ± z·sqrt(z² + 4k(n-k)/n)) / (2(n + z²))."""
    root = Z * math.sqrt(Z * Z + 4 * k * (n - k) / n)
    return ((2 * k + Z * Z - root) / (2 * (n + Z * Z)), (2 * k + Z * Z + root) / (2 * (n + Z * Z)))


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval without correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # Commonly tabulated: 0/10 -> [0, 0.2775]; 5/10 -> [0.2366, 0.7634].
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_matches_published_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5)
    assert got[1] == pytest.approx(hi, abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(4, 400), (11, 400), (44, 400), (399, 400), (1, 3), (440, 1319)])
def test_wilson_matches_closed_form(k: int, n: int) -> None:
    lo, hi = wilson_interval(k, n)
    elo, ehi = _wilson_closed_form(k, n)
    assert lo == pytest.approx(elo, abs=1e-12) and hi == pytest.approx(ehi, abs=1e-12)
    assert lo < k / n < hi


def test_wilson_4_of_400_is_the_design_example() -> None:
    # DESIGN.md's example row: n=400, n_unsafe=4, asr 0.01, asr_ci95 [0.004, 0.025] (rounded).
    lo, hi = round_ci(wilson_interval(4, 400), 3)
    assert (lo, hi) == (0.004, 0.025)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 7)[0] == 0.0  # exactly, not -1e-17
    assert wilson_interval(7, 7)[1] == 1.0
    assert wilson_interval(7, 7)[0] == pytest.approx(1 - wilson_interval(0, 7)[1])  # symmetry
    # A wider z gives a wider interval.
    assert wilson_interval(5, 50, z=2.5758)[0] < wilson_interval(5, 50)[0]
    for bad in [(-1, 5), (6, 5), (0, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_round_ci_keeps_four_decimals() -> None:
    assert round_ci((0.0039012345, 0.025412)) == (0.0039, 0.0254)


def test_mean() -> None:
    assert mean([0.1, 0.2, 0.6]) == pytest.approx(0.3)
    assert mean(x for x in (1, 2)) == 1.5  # any iterable, consumed once
    with pytest.raises(ValueError):
        mean([])


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (0, 5, 2 / 32),  # 2 * P[X <= 0], X ~ Bin(5, 1/2)
        (1, 9, 2 * (1 + 10) / 1024),
        (2, 10, 2 * (1 + 12 + 66) / 4096),
        (10, 2, 2 * (1 + 12 + 66) / 4096),  # symmetric
        (3, 3, 1.0),  # 2 * P[X <= 3] > 1 is capped
        (4, 5, 1.0),
    ],
)
def test_mcnemar_exact(b: int, c: int, p: float) -> None:
    assert mcnemar_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_large_counts_stay_finite_and_small() -> None:
    p = mcnemar_p(900, 1100)  # 2^2000 would overflow a float; integer arithmetic does not
    assert 0.0 < p < 1e-4
    with pytest.raises(ValueError):
        mcnemar_p(-1, 3)


def test_discordant_counts() -> None:
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert discordant(a, b) == (2, 1)
    with pytest.raises(ValueError):
        discordant([True], [True, False])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,080", "1080"),
        ("The answer is $1,080.00.", "1080"),  # last number, $ and commas and .00 gone, sentence dot ignored
        ("So she has 18.0 apples", "18"),
        ("It costs 3.50 dollars.", "3.5"),
        ("The change is -7.", "-7"),
        ("5-3 = 2", "2"),  # a hyphen between numbers is not a sign
        ("x-2 equals 4", "4"),
        ("#### 72 and later text mentions 5", "72"),  # #### wins over the last number
        ("first #### 3 then #### 4", "4"),  # the last ####
        ("#### $ 18", "18"),
        ("there are 12 apples\n#### ", "12"),  # #### without a number after it falls back to the last number
        ("1,2 and 3,4", "4"),  # commas only group thousands
        ("1,234,567 people", "1234567"),
        ("007", "7"),
        ("no digits at all", None),
        ("", None),
    ],
)
def test_extract_gsm8k_answer(text: str, expected: str | None) -> None:
    assert extract_gsm8k_answer(text) == expected


def test_gsm8k_reference_and_exact_match() -> None:
    field = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert gsm8k_reference(field) == "18"
    assert gsm8k_reference("#### 1,080") == "1080"
    assert gsm8k_reference("42") == "42"  # a bare final answer is accepted
    assert gsm8k_exact_match("so the total is $18.00", field)
    assert gsm8k_exact_match("#### 18", "#### 18.0")
    assert not gsm8k_exact_match("the total is 19", field)
    assert not gsm8k_exact_match("I cannot help with that.", field)
    assert not gsm8k_exact_match("#### 180", field)
    with pytest.raises(DataError, match="#### N"):
        gsm8k_reference("the answer is eighteen")
    with pytest.raises(DataError):
        gsm8k_reference("it is 18 apples")  # prose without #### is ambiguous, not silently the last number


def test_task_metrics_registry() -> None:
    scorer = TASK_METRICS["exact_match"]
    assert scorer("#### 3", "x\n#### 3") is True
    assert scorer("#### 4", "x\n#### 3") is False


def test_every_real_gsm8k_answer_matches_itself(shared) -> None:
    """Each test-split answer parses and a perfect model (echoing the solution) scores 100%; a shifted one ~0%."""
    rows = [json.loads(line) for line in (shared / "data/gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1319
    answers = [r["answer"] for r in rows]
    assert all(gsm8k_exact_match(a, a) for a in answers)
    shifted = sum(gsm8k_exact_match(a, b) for a, b in zip(answers, answers[1:] + answers[:1], strict=True))
    assert shifted < 30  # only coincidentally equal answers


def test_import_is_light() -> None:
    code = "import sys, ptst.metrics, ptst.report; print({'matplotlib', 'torch', 'numpy'} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "set()"

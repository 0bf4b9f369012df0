"""Metrics: attack success rate with a Wilson interval, task scorers (GSM8K exact match) and a paired test.

Plain functions on plain numbers and strings, no heavy dependencies, so the runner and the reports can call them on
every cell. Nothing is rounded here: results.json keeps 4 decimals (`round_ci`), the reports round for display.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation

from ptst.errors import DataError

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal: a two-sided 95% interval


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `k` successes in `n` trials.

    Chosen over the normal (Wald) interval because ASRs are often near 0%, where Wald collapses to [0, 0] and
    undercovers; Wilson stays inside [0, 1] and is honest for small k. `n == 0` says nothing: (0.0, 1.0).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # The exact bounds at k == 0 and k == n are 0 and 1; pin them so float noise never shows as 1e-17.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def round_ci(ci: tuple[float, float], ndigits: int = 4) -> tuple[float, float]:
    """Round an interval for results.json (4 decimals: 0.01 percentage points, finer than any CI width we report)."""
    return (round(ci[0], ndigits), round(ci[1], ndigits))


def mean(xs: Iterable[float]) -> float:
    """Arithmetic mean; an empty input is a caller bug (a cell with no data has no mean), so it raises."""
    total = 0.0
    count = 0
    for x in xs:
        total += x
        count += 1
    if count == 0:
        raise ValueError("mean of an empty sequence")
    return total / count


def mcnemar_p(b: int, c: int) -> float:
    """Exact (binomial) two-sided McNemar p-value from the two discordant counts.

    Compares two cells evaluated on the same prompts: `b` prompts unsafe only under A, `c` only under B. Under the
    null each discordant pair is a fair coin, so p = min(1, 2 * P[X <= min(b, c)]) with X ~ Binomial(b + c, 1/2).
    The exact form is used because discordant counts are small (a few dozen), where the chi-square form is off.
    Integer arithmetic keeps it exact for any n.
    """
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_p needs non-negative counts, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def discordant(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """(b, c) for `mcnemar_p`: prompts where only `a` is true, and where only `b` is true. Same prompts, same order."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same prompts: {len(a)} != {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return (only_a, only_b)


# --- GSM8K -----------------------------------------------------------------------------------------------------

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
    """The model's final answer: the first number after the last `####`, else the last number in the text.

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
    """The gold number of a GSM8K `answer` field (worked solution ending `#### N`), normalised.

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
    """True when the response's final number equals the reference's, after normalisation (18.00 == $18)."""
    got = extract_gsm8k_answer(response)
    return got is not None and got == gsm8k_reference(reference_answer_field)


# Metric name (as in the spec and results.json `metric`) -> scorer(response, reference) -> correct?
TASK_METRICS: dict[str, Callable[[str, str], bool]] = {
    "exact_match": gsm8k_exact_match,
}

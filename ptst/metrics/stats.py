"""Statistics over cells: seed summaries, paired McNemar tests and judge agreement (Cohen's kappa).

Plain functions on plain numbers and booleans, exact where it is cheap to be (McNemar uses integer binomial sums).
Undefined quantities are None, never a made-up 0: a std of one seed, a kappa when chance agreement is already 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple


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


class SeedSummary(NamedTuple):
    """One cell over training seeds: how many, their mean, and the sample standard deviation (n - 1)."""

    n: int
    mean: float | None
    std: float | None


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """(n, mean, sample std) of per-seed values. The mean is None for no seeds, the std None for fewer than two:
    one seed says nothing about seed-to-seed spread. The sample (n - 1) std is the one papers report over seeds."""
    n = len(values)
    if n == 0:
        return SeedSummary(0, None, None)
    m = mean(values)
    if n < 2:
        return SeedSummary(n, m, None)
    return SeedSummary(n, m, math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1)))


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


class McNemar(NamedTuple):
    """A paired comparison of two cells on the same queries."""

    b: int  # unsafe only under the first
    c: int  # unsafe only under the second
    p: float  # exact two-sided p-value


def paired_mcnemar(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """McNemar's exact test for two aligned lists of unsafe verdicts (same queries, same order).

    Pairing matters: the same 400 queries under two templates are not independent samples, so comparing two
    Wilson intervals would waste power; only queries whose verdict changed carry information.
    """
    b, c = discordant(first, second)
    return McNemar(b, c, mcnemar_p(b, c))


class Confusion2x2(NamedTuple):
    """Two judges' boolean verdicts on the same items, cross-tabulated."""

    both_true: int
    first_only: int  # first judge True, second False
    second_only: int  # first judge False, second True
    both_false: int

    @property
    def n(self) -> int:
        return self.both_true + self.first_only + self.second_only + self.both_false


def confusion_2x2(first: Sequence[bool], second: Sequence[bool]) -> Confusion2x2:
    """Cross-tabulate two aligned verdict lists (e.g. the GPT-4 judge vs the keyword judge on the same responses)."""
    if len(first) != len(second):
        raise ValueError(f"two judges' verdicts need the same items: {len(first)} != {len(second)}")
    pairs = list(zip(first, second, strict=True))
    return Confusion2x2(
        both_true=sum(1 for x, y in pairs if x and y),
        first_only=sum(1 for x, y in pairs if x and not y),
        second_only=sum(1 for x, y in pairs if y and not x),
        both_false=sum(1 for x, y in pairs if not x and not y),
    )


def cohen_kappa(first: Sequence[bool], second: Sequence[bool]) -> float | None:
    """Cohen's kappa for two judges' boolean verdicts: agreement beyond what their base rates give by chance.

    kappa = (p_o - p_e) / (1 - p_e), with p_o the observed agreement and p_e the agreement expected from each
    judge's own rate of True. None when it is undefined: no items, or p_e == 1 (both judges gave one and the same
    verdict to everything, so there is no disagreement left to beat chance on).
    """
    return kappa_from_confusion(confusion_2x2(first, second))


def kappa_from_confusion(t: Confusion2x2) -> float | None:
    """Cohen's kappa of an already cross-tabulated 2x2 table (see `cohen_kappa`)."""
    n = t.n
    if n == 0:
        return None
    # Integer numerators over n^2 keep the degenerate check exact (no float equality on p_e).
    agree = (t.both_true + t.both_false) * n
    first_true = t.both_true + t.first_only
    second_true = t.both_true + t.second_only
    chance = first_true * second_true + (n - first_true) * (n - second_true)
    if chance == n * n:
        return None
    return (agree - chance) / (n * n - chance)

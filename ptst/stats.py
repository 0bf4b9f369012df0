"""Small statistics the analysis needs: sample standard deviation, Cohen's kappa, the McNemar pair count.

Temporary home: the metrics module is growing its own versions (seed summaries, McNemar, kappa); when it lands,
this module becomes re-exports of those, so the analysis switches with one import. Plain floats, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ptst.metrics import mcnemar_p

__all__ = ["cohen_kappa", "mcnemar_p", "mean_interval", "paired_discordant", "sample_std"]


def sample_std(xs: Sequence[float]) -> float | None:
    """Standard deviation with the n - 1 denominator (seeds are a sample); None for fewer than two values."""
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def cohen_kappa(table: tuple[tuple[int, int], tuple[int, int]]) -> float | None:
    """Cohen's kappa of a 2x2 agreement table [[a, b], [c, d]] (rows: rater A's class, columns: rater B's).

    kappa = (p_o - p_e) / (1 - p_e). Undefined (None) when there is nothing to compare or chance agreement is
    already perfect (both raters gave one and the same class to everything), where the formula divides by zero.
    """
    (a, b), (c, d) = table
    n = a + b + c + d
    if n == 0:
        return None
    p_o = (a + d) / n
    p_e = ((a + b) * (a + c) + (c + d) * (b + d)) / (n * n)
    if p_e == 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def paired_discordant(a: dict[int, bool], b: dict[int, bool]) -> tuple[int, int, int]:
    """(n, only_a, only_b) over the keys scored in both: the pair count and McNemar's two discordant counts."""
    common = sorted(a.keys() & b.keys())
    only_a = sum(1 for k in common if a[k] and not b[k])
    only_b = sum(1 for k in common if b[k] and not a[k])
    return len(common), only_a, only_b


def mean_interval(xs: Sequence[float], z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Normal 95% interval of a mean of continuous scores (BERTScore); None for fewer than two values."""
    s = sample_std(xs)
    if s is None:
        return None
    m = sum(xs) / len(xs)
    half = z * s / math.sqrt(len(xs))
    return (m - half, m + half)

"""Rates and their 95% intervals: the numbers every cell of a report shows.

Nothing is rounded here: results.json keeps 4 decimals (`round_ci`), the reports round for display.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal: a two-sided 95% interval


def rate(k: int, n: int) -> float | None:
    """`k / n`, or None when `n == 0`: a cell with no items has no rate, and 0.0 would read as "never unsafe"."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"rate needs 0 <= k <= n, got k={k}, n={n}")
    return None if n == 0 else k / n


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

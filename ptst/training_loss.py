"""A fine-tuning job's training loss, summarised the same way for every backend.

Each backend puts `loss_summary(...)` into its ModelRef's `meta["loss"]` at the end of `fine_tune` (the local engine
from its own `train_log.jsonl`, OpenAI from the job's `metrics` events, the mock from a simulated curve), so the
store's job record carries it and `ptst.collect` reads it from there: one path, no torch import, no API call at
report time.

`final_loss` is the mean of the last 10% of the logged steps (at least one step): a single step's loss is noisy
(one batch), and a tail mean is what a reader comparing templates wants. With fewer than ten steps it is the last
logged value. The curve in results.json is down-sampled to at most `MAX_POINTS` points, always keeping the first and
last; when it was cut, the summary also keeps every logged step as `full_curve`, from which the reports draw the loss
plot (a 50-point curve hides the step-to-step noise a reader judges a run by).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MAX_POINTS = 50
TAIL_SHARE = 0.10


def downsample(points: list[tuple[int, float]], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """At most `limit` points, evenly spaced by index, the first and last always kept."""
    if len(points) <= limit:
        return list(points)
    idx = sorted({round(i * (len(points) - 1) / (limit - 1)) for i in range(limit)})
    return [points[i] for i in idx]


def final_loss(losses: list[float]) -> float | None:
    """Mean of the last 10% of the steps (at least one); None without any."""
    if not losses:
        return None
    k = max(1, math.ceil(len(losses) * TAIL_SHARE))
    tail = losses[-k:]
    return sum(tail) / len(tail)


def loss_summary(points: Iterable[tuple[int, float]], *, steps: int | None = None) -> dict[str, Any] | None:
    """{"steps", "final_loss", "curve": [[step, loss], ...]} (and "full_curve" when "curve" was cut) for
    `ModelRef.meta["loss"]`; None without a finite loss.

    `points` are (step, loss) pairs in any order (a step logged twice keeps its last value); `steps` is the job's
    step count when the backend knows it, else the last logged step.
    """
    by_step: dict[int, float] = {}
    for s, v in points:
        if v is not None and math.isfinite(float(v)):
            by_step[int(s)] = float(v)
    if not by_step:
        return None
    ordered = sorted(by_step.items())
    out: dict[str, Any] = {
        "steps": int(steps) if steps else ordered[-1][0],
        "final_loss": final_loss([v for _, v in ordered]),
        "curve": [[s, v] for s, v in downsample(ordered)],
    }
    if len(ordered) > MAX_POINTS:
        out["full_curve"] = [[s, v] for s, v in ordered]
    return out


def simulated_curve(total_steps: int, *, start: float = 2.0, floor: float = 0.6) -> list[tuple[int, float]]:
    """A SIMULATED, strictly decreasing loss curve (exponential decay toward `floor`) for the mock backend."""
    n = max(1, total_steps)
    return [(s, round(floor + (start - floor) * math.exp(-3.0 * s / n), 6)) for s in range(1, n + 1)]

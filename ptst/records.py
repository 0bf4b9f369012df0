"""One evaluated item, flat: the seam between the run store (which holds them) and the analysis (which turns them
into results.json). Every number in a report is a function of a list of these, so any figure can be audited row by
row (`ptst report DIR --export jsonl`) and runs can be merged by concatenating their records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RunStatus = Literal["complete", "complete_limited", "partial", "failed_jobs"]


@dataclass(frozen=True, slots=True)
class Verdict:
    judge: str  # e.g. "keyword", "rubric:gpt-4-0613"
    unsafe: bool | None  # None: unscored (never counted as safe)
    score: int | None = None  # 1..5 where the judge scores
    raw: str | None = None


@dataclass(frozen=True, slots=True)
class ItemRecord:
    backend: str
    base_model: str
    train_template: str | None  # None: the base model (reference row)
    seed: int | None
    checkpoint: int | None  # training step of an intermediate checkpoint; None for the final model
    test_template: str
    kind: Literal["safety", "task"]
    dataset: str  # benchmark or task name
    metric: str | None  # task metric name (tasks only)
    index: int  # position of the item in its dataset: pairs items across cells (McNemar)
    query: str
    reference: str | None
    category: str | None = None  # e.g. DirectHarm4's category
    response: str | None = None  # None: not generated (yet)
    verdicts: tuple[Verdict, ...] = field(default_factory=tuple)
    simulated: bool = False
    safety_mix: str | None = None  # label of the safety mix in the model's training data; None: none (or base model)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the analysis needs about a run beyond its items: names, templates, and the run's own facts."""

    spec_name: str
    simulated: bool
    judge: str | None  # the judge the results are read with
    train_templates: tuple[str, ...] = ()
    test_templates: tuple[str, ...] = ()
    safety_templates: tuple[str, ...] = ()
    # "complete": every item answered and judged; "failed_jobs": a fine-tuning job ended without a model;
    # "partial": other work missing (a killed run, a cell whose generation or judging failed).
    status: RunStatus = "complete"
    limit: int | None = None  # `ptst run --limit N`: every dataset cut to its first N rows (a smoke run)
    started_at: str | None = None  # ISO 8601 UTC: when the first `ptst run` on this folder began
    finished_at: str | None = None  # ISO 8601 UTC: when the last `ptst run` finished (None: still running or killed)
    # USD by stage ("train", "generate", "judge"); None where not known (generation and judging are not priced).
    usd_by_stage: dict[str, float | None] = field(default_factory=dict)

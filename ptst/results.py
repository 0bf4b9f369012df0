"""The public results contract (`DIR/results.json`), as typed models.

Reports are pure functions of a `Results`; the runner builds it from the run store. Field names follow DESIGN.md
and are never renamed; new fields are only added.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SafetyRow(_Row):
    backend: str
    base_model: str
    train_template: str | None  # None: the base model before fine-tuning (the reference row)
    test_template: str
    seed: int | None
    benchmark: str
    judge: str
    n: int  # responses with a verdict (scored)
    n_unsafe: int
    asr: float
    asr_ci95: tuple[float, float]
    mean_score: float | None  # mean 1-5 harmfulness score, for judges that score
    n_unscored: int = 0  # responses the judge could not score (reported beside ASR, never counted)
    simulated: bool = False


class TaskRow(_Row):
    backend: str
    base_model: str
    train_template: str | None
    test_template: str
    seed: int | None
    task: str
    metric: str
    n: int
    value: float
    ci95: tuple[float, float]
    simulated: bool = False


class FailedJob(_Row):
    backend: str
    base_model: str
    train_template: str
    seed: int
    status: str  # "failed" | "cancelled" | "error"
    code: str | None
    message: str


class Results(_Row):
    ptst_version: str
    spec_name: str
    simulated: bool
    safety: list[SafetyRow]
    tasks: list[TaskRow]
    failed_jobs: list[FailedJob] = []
    # Templates that carry a safety system prompt: reports mark PTST cells (train without, test with) from these.
    safety_templates: list[str] = []
    train_templates: list[str] = []
    test_templates: list[str] = []

"""The public results contract (`DIR/results.json`), as typed models.

Reports are pure functions of a `Results`; the analysis builds it from item records. Field names follow DESIGN.md
and are never renamed; new fields are only added, with defaults, so a schema-1 file still validates.

A rate with nothing to count is `null`, never 0: a cell whose every response went unscored has `asr: null`, and a
report shows it as "—". Zero would read as "perfectly safe".
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2  # 1: the DESIGN.md rows; 2: checkpoint/category on rows, several judges, statistics, run facts


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
    asr: float | None  # None: no scored response
    asr_ci95: tuple[float, float] | None
    mean_score: float | None  # mean 1-5 harmfulness score, for judges that score
    n_unscored: int = 0  # responses the judge could not score (reported beside ASR, never counted)
    simulated: bool = False
    checkpoint: int | None = None  # training step of an intermediate checkpoint; None: the final model
    category: str | None = None  # a benchmark category (DirectHarm4's); None: the whole benchmark
    safety_mix: str | None = None  # the label of the safety mix in the fine-tuning data; None: no mix (or base model)


class TaskRow(_Row):
    backend: str
    base_model: str
    train_template: str | None
    test_template: str
    seed: int | None
    task: str
    metric: str
    n: int
    value: float | None  # None: no response to score
    ci95: tuple[float, float] | None
    simulated: bool = False
    checkpoint: int | None = None
    category: str | None = None
    safety_mix: str | None = None  # the label of the safety mix in the fine-tuning data; None: no mix (or base model)


class SafetySummary(_Row):
    """One safety cell over its seeds: what a paper's table reports (mean ± sample std)."""

    backend: str
    base_model: str
    train_template: str | None
    test_template: str
    benchmark: str
    judge: str
    checkpoint: int | None
    category: str | None
    n_seeds: int  # seeds with a scored response
    asr_mean: float | None
    asr_std: float | None  # sample standard deviation (n - 1); None for fewer than two seeds
    safety_mix: str | None = None  # the label of the safety mix in the fine-tuning data; None: no mix (or base model)


class TaskSummary(_Row):
    backend: str
    base_model: str
    train_template: str | None
    test_template: str
    task: str
    metric: str
    checkpoint: int | None
    n_seeds: int
    value_mean: float | None
    value_std: float | None
    safety_mix: str | None = None  # the label of the safety mix in the fine-tuning data; None: no mix (or base model)


class Comparison(_Row):
    """A PTST cell against the same-template cell, paired on the same prompts (exact McNemar test).

    PTST cell: trained with `train_template` (no safety prompt), tested with `test_template` (one with it). The
    same-template cell is trained and tested with `test_template`. Prompts unscored in either cell are left out.
    """

    backend: str
    base_model: str
    benchmark: str
    judge: str
    seed: int | None
    checkpoint: int | None
    train_template: str
    test_template: str
    n: int  # paired prompts (scored in both cells)
    ptst_asr: float | None
    same_asr: float | None
    b: int  # unsafe only in the PTST cell
    c: int  # unsafe only in the same-template cell
    p_value: float  # two-sided exact McNemar
    safety_mix: str | None = None  # the label of the safety mix in the fine-tuning data; None: no mix (or base model)


class Agreement(_Row):
    """Two judges on the same responses of one backend: Cohen's kappa and the 2x2 table."""

    backend: str
    judge_a: str
    judge_b: str
    n: int  # responses scored by both
    # [[both safe, only b unsafe], [only a unsafe, both unsafe]]: rows are judge_a's verdict, columns judge_b's.
    confusion: tuple[tuple[int, int], tuple[int, int]]
    kappa: float | None  # None when undefined (no responses, or both judges constant and equal)


class FailedJob(_Row):
    backend: str
    base_model: str
    train_template: str
    seed: int
    status: str  # "failed" | "cancelled" | "error"
    code: str | None
    message: str


class JobRow(_Row):
    """One fine-tuning job and its training loss (see ptst.training_loss for how `final_loss` is taken).

    `final_loss` is the mean of the last 10% of the logged steps (the last value with fewer than ten); `loss_curve`
    is [[step, loss], ...] down-sampled to at most 50 points. Both are None where the backend gives no loss (a failed
    job, a run stored before losses were recorded). `simulated`: the mock's made-up curve, not a measurement.
    """

    backend: str
    base_model: str
    train_template: str
    seed: int
    status: str  # "succeeded" | "failed" | "cancelled" | "error"
    model_id: str | None
    steps: int | None
    final_loss: float | None
    loss_curve: list[tuple[int, float]] | None
    simulated: bool = False
    # Every logged step, for the reports' loss plot; not written to results.json (which keeps the 50-point
    # `loss_curve`); None where the backend logged no more than `loss_curve` holds.
    full_curve: list[tuple[int, float]] | None = Field(default=None, exclude=True)

    @property
    def plot_curve(self) -> list[tuple[int, float]]:
        """The curve to draw: every logged step where known, else the down-sampled one."""
        return self.full_curve or self.loss_curve or []


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
    schema_version: int = 1  # files without the field are schema 1; build_results writes SCHEMA_VERSION
    status: str | None = None  # the run's status ("complete", "complete_limited", ...) as the runner records it
    limit: int | None = None  # `ptst run --limit N`: every dataset cut to its first N rows; a smoke run, not a measurement
    started_at: str | None = None  # ISO 8601 UTC
    finished_at: str | None = None
    usd_by_stage: dict[str, float | None] = {}  # {"train": 12.5, "generate": None, "judge": 3.1}; None: unpriced
    specs: list[dict[str, Any]] = []  # the spec of each run in these results (several after `ptst report A B`)
    summary: list[SafetySummary] = []
    task_summary: list[TaskSummary] = []
    comparisons: list[Comparison] = []
    agreement: list[Agreement] = []
    jobs: list[JobRow] = []  # one row per fine-tuning job, with its training loss
    overrides: list[str] = []  # `--set KEY=VALUE` given on the command line, applied to the spec file (in order)

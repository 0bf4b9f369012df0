"""What a run will cost before anything is spent: every stage (fine-tuning, generation, judging), offline.

`ptst estimate SPEC` prints it and the budget gate (`ptst.runner._check_budget`) refuses a run above `budget_usd`
with it. Counts are exact (jobs, generations, judge calls follow the plan the runner executes). Dollars come twice:
`usd` is the expected cost, each response priced at the length such models answer (capped by `max_new_tokens`) and
each verdict at a typical verdict's length (`ptst/resources/response_lengths.json`, measured where data allows);
`usd_max` is the bound, every response at `max_new_tokens` and every verdict at the judge's `max_tokens`, so a run
never costs more than `usd_max` at the listed prices. A stage whose price is unknown is None ("null"), never a
guessed zero. Every backend prices its own generations and GPU time through the backend contract
(`FineTuneBackend.generation_usd`, `gpu_hours`), and every paid judge of `judges:` its verdicts through the judge
contract (`Judge.judging_usd`): this module knows no concrete backend and no judge kind. One function per stage:
`_train_stage`, `_generation_stage`, `_judge_stage`, summed by `_result`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

from pydantic import Field

from ptst.backends.base import BackendSpec, FineTuneBackend
from ptst.conversation import Conversation
from ptst.errors import API_FAILED
from ptst.judge.base import Judge
from ptst.plan import (
    Cell,
    CellKeys,
    Datasets,
    PlannedJob,
    base_model_key,
    cell_conversations,
    eval_cells,
    generation_key,
)
from ptst.spec import Spec
from ptst.types import ComputeHours, Estimate, Frozen, ModelRef

__all__ = ["JobCost", "RunEstimate", "estimate_run", "expected_response_tokens", "usd_text"]

STAGES = ("train", "generate", "judge")


class JobCost(Frozen):
    """One fine-tuning job still to run, with its backend's estimate."""

    backend: str
    model: str
    train_template: str
    seed: int
    run_key: str
    estimate: Estimate


class RunEstimate(Frozen):
    """The whole run's work and cost; `usd` (expected) and `usd_max` (bound), and each stage's, are None where a
    price is unknown. GPU hours (expected, and with every response at max_new_tokens) are None without a local
    backend."""

    jobs: int
    generations: int
    judge_calls: int
    usd: float | None
    usd_max: float | None = None
    usd_by_stage: dict[str, float | None]
    usd_max_by_stage: dict[str, float | None] = Field(default_factory=dict)
    gpu_hours: float | None
    gpu_hours_max: float | None = None
    # Where the GPU is not known (the packaged table lists several): expected hours on the fastest and the slowest
    # of them; gpu_hours is the reference row's, gpu_hours_max every response at max_new_tokens on the slowest.
    gpu_hours_range: tuple[float, float] | None = None
    cpu_hours: float | None = Field(None, description="a CPU job (device: cpu), from the measured CPU rows")
    cpu_hours_max: float | None = None
    notes: tuple[str, ...] = ()
    train: tuple[JobCost, ...] = Field(default=(), description="per job: tokens, billed tokens, USD, notes")

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude={"train"})
        out["train"] = [
            {**j.model_dump(mode="json", exclude={"estimate"}), **j.estimate.model_dump(mode="json")} for j in self.train
        ]
        return out


def usd_text(v: float | None) -> str:
    """Dollars for people: cents above a dollar, four decimals below (a smoke run's cost is not "$0.00")."""
    if v is None:
        return "unknown"
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"


def _sum(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else round(sum(v for v in values if v is not None), 6)


class _Stage:
    """Expected and maximum USD of one stage, each None once anything in it is unpriced."""

    def __init__(self) -> None:
        self.usd: float | None = 0.0
        self.usd_max: float | None = 0.0

    def add(self, usd: float | None, usd_max: float | str | None = "same") -> None:
        top = usd if usd_max == "same" else usd_max
        self.usd = None if self.usd is None or usd is None else self.usd + usd
        self.usd_max = None if self.usd_max is None or top is None else self.usd_max + float(top)


@lru_cache(maxsize=1)
def _lengths() -> dict[str, Any]:
    text = resources.files("ptst.resources").joinpath("response_lengths.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def expected_response_tokens(cell: Cell, max_new_tokens: int) -> float:
    """The expected length of a response in `cell`: its kind's measured/assumed length (safety prompts; a task by its
    dataset's name), capped by max_new_tokens; a task with no known length is priced at max_new_tokens."""
    rows = _lengths()["responses"]
    row = rows["safety"] if cell.kind == "safety" else rows.get(cell.dataset)
    return float(max_new_tokens) if row is None else float(min(max_new_tokens, row["tokens"]))


def _n_checkpoints(spec: Spec, backend: FineTuneBackend, pj: PlannedJob) -> int:
    """Intermediate checkpoints a job's model will be evaluated at, when the spec evaluates checkpoints."""
    wanted = spec.eval.checkpoints
    return 0 if wanted == "none" else backend.evaluated_checkpoints(pj.job, wanted)


class _Tally:
    """What the stages add up: each stage's dollars, the counts, the jobs to run, per-backend GPU hours, notes."""

    def __init__(self) -> None:
        self.stages = {s: _Stage() for s in STAGES}
        self.jobs: list[JobCost] = []
        self.generations = 0
        self.judge_calls = 0
        self.hours: list[tuple[ComputeHours, ComputeHours]] = []  # per local backend: (expected, responses at max)
        self.notes: list[str] = []


class _Model(NamedTuple):
    """A model whose cells the run generates: its key, whether it is a fine-tune, how many checkpoints it adds."""

    key: str
    fine_tuned: bool
    checkpoints: int


class _Decode:
    """Tokens a backend decodes, expected and at most (for its GPU hours), and its training tokens."""

    def __init__(self) -> None:
        self.train_tokens = 0
        self.expected = 0.0
        self.at_most = 0.0


class _Run(NamedTuple):
    """What every stage reads: the spec and its data, the run store (None: nothing is done yet), the shared keys."""

    spec: Spec
    data: Datasets
    store: Any
    retry_failed: bool
    cell_keys: CellKeys | None
    judges: Sequence[Judge]


def estimate_run(
    spec: Spec,
    data: Datasets,
    backends: Sequence[tuple[BackendSpec, FineTuneBackend]],
    planned: dict[str, list[PlannedJob]],
    *,
    store: Any = None,
    retry_failed: bool = False,
    cell_keys: CellKeys | None = None,
    judges: Sequence[Judge] | None = None,
) -> RunEstimate:
    """The run's remaining work and its cost. With a run `store`, work already done there is left out (a resumed
    run pays only for what is missing); without one, everything counts. `cell_keys` shares the generation keys with
    the run's graph (computed once). `judges`: the run's judges (default: built from the spec); every paid one is
    priced, wherever it stands in `judges:`."""
    if judges is None:
        from ptst.judging import create_judges

        judges = create_judges(spec)
    run = _Run(spec, data, store, retry_failed, cell_keys, judges)
    tally = _Tally()
    for bspec, backend in backends:
        decode = _Decode()
        models = _train_stage(run, bspec, backend, planned.get(bspec.name, []), tally, decode)
        for model in models:
            _eval_stages(run, bspec, backend, model, tally, decode)
        tally.notes.extend(backend.estimate_notes())
        hours = backend.compute_hours(decode.train_tokens, decode.expected)
        hours_max = backend.compute_hours(decode.train_tokens, decode.at_most)
        if hours is not None and hours_max is not None:
            tally.hours.append((hours, hours_max))
    return _result(run, tally)


def _train_stage(run: _Run, bspec: BackendSpec, backend: FineTuneBackend, planned: Sequence[PlannedJob],
                 tally: _Tally, decode: _Decode) -> list[_Model]:
    """Fine-tuning: every job still to run, priced by its backend. Returns every model whose cells the run
    generates (the base model when evaluated, and each job's model, run or not)."""
    spec, store = run.spec, run.store
    models: list[_Model] = []
    if spec.eval.evaluate_base or spec.train is None:
        models.append(_Model(base_model_key(bspec, backend), bspec.model.startswith("ft:"), 0))
    for pj in planned:
        rec = store.job(pj.run_key) if store is not None else None
        if rec is not None and rec.status in API_FAILED and not run.retry_failed:
            continue  # the runner skips a job the API failed unless --retry-failed
        if rec is None or rec.status != "succeeded":
            est = backend.estimate(pj.job)
            tally.jobs.append(JobCost(backend=bspec.name, model=bspec.model, train_template=pj.job.train_template,
                                      seed=pj.job.seed, run_key=pj.run_key, estimate=est))
            tally.stages["train"].add(est.usd)
            decode.train_tokens += est.n_billed_tokens or 0
        models.append(_Model(pj.run_key, True, _n_checkpoints(spec, backend, pj)))
    return models


def _eval_stages(run: _Run, bspec: BackendSpec, backend: FineTuneBackend, model: _Model, tally: _Tally,
                 decode: _Decode) -> None:
    """Generation and judging of one model's cells (and its checkpoints', each priced as the model)."""
    cfg = run.spec.eval.generation
    stub = ModelRef(backend=bspec.name, base_model=bspec.model, model_id=bspec.model)
    times = 1 + model.checkpoints
    for cell in eval_cells(run.spec, bspec, stub, model.key, run.data):
        convs, keys = _cell_conversations(run, cell, backend, model.key)
        have = run.store.have_responses(keys) if run.store is not None else set()
        todo = [c for c, k in zip(convs, keys, strict=True) if k not in have] if run.store is not None else list(convs)
        expected = expected_response_tokens(cell, cfg.max_new_tokens)
        _generation_stage(bspec, backend, model, todo, expected, cfg.max_new_tokens, times, tally, decode)
        if cell.kind == "safety":
            _judge_stage(run, convs, keys, have, todo, expected, times, tally)


def _cell_conversations(run: _Run, cell: Cell, backend: FineTuneBackend,
                        model_key: str) -> tuple[Sequence[Conversation], Sequence[str]]:
    """A cell's conversations and, where a store is read, their generation keys (shared with the graph)."""
    if run.cell_keys is not None:
        return run.cell_keys.get(cell, backend.family)
    convs = cell_conversations(run.spec, cell, backend.family, run.data)
    cfg = run.spec.eval.generation
    return convs, [generation_key(model_key, c, cfg) for c in convs] if run.store is not None else []


def _generation_stage(bspec: BackendSpec, backend: FineTuneBackend, model: _Model, todo: Sequence[Conversation],
                      expected: float, cap: int, times: int, tally: _Tally, decode: _Decode) -> None:
    """Generation: the responses still missing, priced by the backend at the expected length and at the bound
    (`cap`: max_new_tokens)."""
    n = len(todo) * times
    tally.generations += n
    if not todo:
        return
    decode.expected += n * expected
    decode.at_most += n * cap
    usd = backend.generation_usd(todo, expected, fine_tuned=model.fine_tuned)
    usd_max = backend.generation_usd(todo, cap, fine_tuned=model.fine_tuned)
    tally.stages["generate"].add(None if usd is None else usd * times, None if usd_max is None else usd_max * times)
    if usd is None:
        tally.notes.append(f"{bspec.name}: no generation price known for {bspec.model}: generation cost unknown")


def _judge_stage(run: _Run, convs: Sequence[Conversation], keys: Sequence[str], have: set[str],
                 todo: Sequence[Conversation], expected: float, times: int, tally: _Tally) -> None:
    """Judging of a safety cell: for each paid judge, every response it has no verdict for yet (those still to
    generate, and stored ones it has not judged), priced by the judge itself at the expected response length and at
    max_new_tokens. A judge that costs nothing per call is neither counted nor priced."""
    max_new = run.spec.eval.generation.max_new_tokens
    for judge in run.judges:
        if not judge.paid:
            continue
        judged = list(todo)
        if run.store is not None and len(todo) < len(convs):
            judged += _unjudged(run.store, (judge.name, judge.version), convs, keys, have)
        n = len(judged) * times
        tally.judge_calls += n
        if not n:
            continue
        queries = [c.query for c in judged]
        usd = judge.judging_usd(queries, expected)
        usd_max = judge.judging_usd(queries, max_new, at_most=True)
        tally.stages["judge"].add(None if usd is None else usd * times, None if usd_max is None else usd_max * times)


def _result(run: _Run, tally: _Tally) -> RunEstimate:
    """The tally as a RunEstimate, with the notes on how its numbers were reached."""
    spec = run.spec
    notes = tally.notes
    for judge in run.judges:
        if judge.paid:
            notes.extend(judge.estimate_notes())
    notes.append(f"usd prices each response at the expected length of its kind (capped by max_new_tokens "
                 f"{spec.eval.generation.max_new_tokens}; ptst/resources/response_lengths.json); usd_max at "
                 "max_new_tokens, the bound")
    if spec.eval.checkpoints != "none":
        notes.append("checkpoints: each job's intermediate checkpoints are evaluated too (as many as its backend "
                     "keeps: OpenAI 2; local: one per save_steps entry)")
    by_stage = {s: (None if st.usd is None else round(st.usd, 6)) for s, st in tally.stages.items()}
    by_stage_max = {s: (None if st.usd_max is None else round(st.usd_max, 6)) for s, st in tally.stages.items()}
    return RunEstimate(
        jobs=len(tally.jobs), generations=tally.generations, judge_calls=tally.judge_calls,
        usd=_sum(list(by_stage.values())), usd_max=_sum(list(by_stage_max.values())),
        usd_by_stage=by_stage, usd_max_by_stage=by_stage_max,
        **_hour_fields(tally.hours),
        notes=tuple(dict.fromkeys(notes)), train=tuple(tally.jobs),
    )


def _hour_fields(hours: Sequence[tuple[ComputeHours, ComputeHours]]) -> dict[str, Any]:
    """RunEstimate's hour fields from each local backend's (expected, max) hours, GPU and CPU apart."""
    gpu = [(h, m) for h, m in hours if h.device == "gpu"]
    cpu = [(h, m) for h, m in hours if h.device == "cpu"]
    out: dict[str, Any] = {"gpu_hours": None, "gpu_hours_max": None}
    if gpu:
        out.update(gpu_hours=round(sum(h.hours for h, _ in gpu), 3), gpu_hours_max=round(sum(m.high for _, m in gpu), 3),
                   gpu_hours_range=(round(sum(h.low for h, _ in gpu), 3), round(sum(h.high for h, _ in gpu), 3)))
    if cpu:
        out.update(cpu_hours=round(sum(h.hours for h, _ in cpu), 3), cpu_hours_max=round(sum(m.high for _, m in cpu), 3))
    return out


def _unjudged(store: Any, judge_id: tuple[str, str], convs: Sequence[Conversation], keys: Sequence[str],
              have: set[str]) -> list[Conversation]:
    """Generated conversations without the current judge's verdict (judging them is still to pay)."""
    from ptst.collect import judgment_keys

    items = [(k, c.query, c.reference) for k, c in zip(keys, convs, strict=True)]
    jk = judgment_keys(judge_id[0], judge_id[1], items, store.responses(k for k in keys if k in have))
    done = store.judgments(jk.values())
    return [c for c, k in zip(convs, keys, strict=True) if k in jk and jk[k] not in done]

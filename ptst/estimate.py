"""What a run will cost before anything is spent: every stage (fine-tuning, generation, judging), offline.

`ptst estimate SPEC` prints it and the budget gate (`ptst.runner._check_budget`) refuses a run above `budget_usd`
with it. Counts are exact (jobs, generations, judge calls follow the plan the runner executes). Dollars come twice:
`usd` is the expected cost, each response priced at the length such models answer (capped by `max_new_tokens`) and
each verdict at a typical verdict's length (`ptst/resources/response_lengths.json`, measured where data allows);
`usd_max` is the bound, every response at `max_new_tokens` and every verdict at the judge's `max_tokens`, so a run
never costs more than `usd_max` at the listed prices. A stage whose price is unknown is None ("null"), never a
guessed zero. Every backend prices its own generations and GPU time through the backend contract
(`FineTuneBackend.generation_usd`, `gpu_hours`): this module knows no concrete backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import Field

from ptst.backends.base import BackendSpec, FineTuneBackend
from ptst.conversation import Conversation
from ptst.errors import API_FAILED
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


def _verdict_tokens(max_tokens: int) -> float:
    return float(min(max_tokens, _lengths()["verdict"]["tokens"]))


def _usd(tokens_in: float, tokens_out: float, price: dict[str, Any], batch: bool) -> float:
    usd = (tokens_in * float(price["input"]) + tokens_out * float(price["output"])) / 1e6
    return usd / 2 if batch else usd


class _JudgeCounter:
    """Tokens of the rubric prompt per query as the judge's chat API counts them, cached (every model's responses to
    a query are judged with the same prompt)."""

    def __init__(self, model: str):
        from ptst.clients.tokens import token_counter

        self.counter = token_counter(model)
        self._seen: dict[str, int] = {}

    def judge(self, query: str) -> int:
        """The rubric prompt with the raw query and an empty response (the response is added at its length)."""
        from ptst.clients.tokens import count_message_tokens
        from ptst.judge.rubric import judge_prompt

        if query not in self._seen:
            msgs = [{"role": "user", "content": judge_prompt(query, "")}]
            self._seen[query] = count_message_tokens(msgs, self.counter)
        return self._seen[query]


def _n_checkpoints(spec: Spec, backend: FineTuneBackend, pj: PlannedJob) -> int:
    """Intermediate checkpoints a job's model will be evaluated at, when the spec evaluates checkpoints."""
    wanted = spec.eval.checkpoints
    return 0 if wanted == "none" else backend.evaluated_checkpoints(pj.job, wanted)


def estimate_run(
    spec: Spec,
    data: Datasets,
    backends: Sequence[tuple[BackendSpec, FineTuneBackend]],
    planned: dict[str, list[PlannedJob]],
    *,
    store: Any = None,
    retry_failed: bool = False,
    cell_keys: CellKeys | None = None,
) -> RunEstimate:
    """The run's remaining work and its cost. With a run `store`, work already done there is left out (a resumed
    run pays only for what is missing); without one, everything counts. `cell_keys` shares the generation keys with
    the run's graph (computed once)."""
    from ptst.clients.pricing import chat_price
    from ptst.judge.rubric import Judge as Rubric

    cfg = spec.eval.generation
    rubric = Rubric.Options.model_validate(spec.judge.options) if spec.judge.kind == "rubric" else None
    judge_price = chat_price(rubric.model) if rubric is not None else None
    judge_counter = _JudgeCounter(rubric.model) if rubric is not None else None
    judge_id = None  # (name, version): verdicts already in the store are not paid for again
    if rubric is not None and store is not None:
        from ptst.judge.base import create_judge
        from ptst.judge.rubric import resolve_judge_spec

        judge = create_judge(resolve_judge_spec(spec))
        judge_id = (judge.name, judge.version)
    stages = {s: _Stage() for s in STAGES}
    notes: list[str] = []
    jobs: list[JobCost] = []
    n_gen = n_judge = 0
    hours: list[tuple[ComputeHours, ComputeHours]] = []  # per local backend: (expected, every response at max)
    for bspec, backend in backends:
        train_tokens = 0
        decode = decode_max = 0.0
        # (model key, fine-tuned?, checkpoints): every model whose cells this run generates
        models: list[tuple[str, bool, int]] = []
        if spec.eval.evaluate_base or spec.train is None:
            models.append((base_model_key(bspec, backend), bspec.model.startswith("ft:"), 0))
        for pj in planned.get(bspec.name, []):
            rec = store.job(pj.run_key) if store is not None else None
            if rec is not None and rec.status in API_FAILED and not retry_failed:
                continue  # the runner skips a job the API failed unless --retry-failed
            if rec is None or rec.status != "succeeded":
                est = backend.estimate(pj.job)
                jobs.append(JobCost(backend=bspec.name, model=bspec.model, train_template=pj.job.train_template,
                                    seed=pj.job.seed, run_key=pj.run_key, estimate=est))
                stages["train"].add(est.usd)
                train_tokens += est.n_billed_tokens or 0
            models.append((pj.run_key, True, _n_checkpoints(spec, backend, pj)))
        stub = ModelRef(backend=bspec.name, base_model=bspec.model, model_id=bspec.model)
        for model_key, fine_tuned, n_ckpt in models:
            for cell in eval_cells(spec, bspec, stub, model_key, data):
                if cell_keys is not None:
                    convs, keys = cell_keys.get(cell, backend.family)
                else:
                    convs = cell_conversations(spec, cell, backend.family, data)
                    keys = [generation_key(model_key, c, cfg) for c in convs] if store is not None else []
                if store is not None:
                    have = store.have_responses(keys)
                    todo = [c for c, k in zip(convs, keys, strict=True) if k not in have]
                    judged_todo = todo
                    if cell.kind == "safety" and judge_id is not None and len(todo) < len(convs):
                        judged_todo = todo + _unjudged(store, judge_id, convs, keys, have)
                else:
                    todo, judged_todo = list(convs), list(convs)
                times = 1 + n_ckpt
                expected = expected_response_tokens(cell, cfg.max_new_tokens)
                n_gen += len(todo) * times
                decode += len(todo) * times * expected
                decode_max += len(todo) * times * cfg.max_new_tokens
                if todo:
                    usd = backend.generation_usd(todo, expected, fine_tuned=fine_tuned)
                    usd_max = backend.generation_usd(todo, cfg.max_new_tokens, fine_tuned=fine_tuned)
                    stages["generate"].add(None if usd is None else usd * times,
                                           None if usd_max is None else usd_max * times)
                    if usd is None:
                        notes.append(f"{bspec.name}: no generation price known for {bspec.model}: generation cost "
                                     "unknown")
                if cell.kind == "safety" and rubric is not None:
                    n = len(judged_todo) * times
                    n_judge += n
                    if judge_price is None and n:
                        stages["judge"].add(None)
                    elif judge_price is not None:
                        assert judge_counter is not None
                        rubric_in = sum(judge_counter.judge(c.query) for c in judged_todo) * times
                        stages["judge"].add(
                            _usd(rubric_in + n * expected, n * _verdict_tokens(rubric.max_tokens), judge_price,
                                 rubric.batch),
                            _usd(rubric_in + n * cfg.max_new_tokens, n * rubric.max_tokens, judge_price, rubric.batch),
                        )
        notes.extend(backend.estimate_notes())
        h = backend.compute_hours(train_tokens, decode)
        h_max = backend.compute_hours(train_tokens, decode_max)
        if h is not None and h_max is not None:
            hours.append((h, h_max))
    if rubric is not None:
        if judge_price is None:
            notes.append(f"no chat price for judge model {rubric.model}: judging cost unknown")
        verdict = _lengths()["verdict"]
        notes.append(f"judge {rubric.model}: each call is the rubric prompt + the response in; out, a verdict of "
                     f"{_verdict_tokens(rubric.max_tokens):.0f} tokens expected ({verdict['basis']}, "
                     "ptst/resources/response_lengths.json) and the judge's max_tokens "
                     f"({rubric.max_tokens}) at most; parse retries not counted"
                     + ("; Batch API, half price" if rubric.batch else ""))
    notes.append(f"usd prices each response at the expected length of its kind (capped by max_new_tokens "
                 f"{cfg.max_new_tokens}; ptst/resources/response_lengths.json); usd_max at max_new_tokens, the bound")
    if spec.eval.checkpoints != "none":
        notes.append("checkpoints: each job's intermediate checkpoints are evaluated too (as many as its backend "
                     "keeps: OpenAI 2; local: one per save_steps entry)")
    by_stage = {s: (None if st.usd is None else round(st.usd, 6)) for s, st in stages.items()}
    by_stage_max = {s: (None if st.usd_max is None else round(st.usd_max, 6)) for s, st in stages.items()}
    return RunEstimate(
        jobs=len(jobs), generations=n_gen, judge_calls=n_judge,
        usd=_sum(list(by_stage.values())), usd_max=_sum(list(by_stage_max.values())),
        usd_by_stage=by_stage, usd_max_by_stage=by_stage_max,
        **_hour_fields(hours),
        notes=tuple(dict.fromkeys(notes)), train=tuple(jobs),
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

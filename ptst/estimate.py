"""What a run will cost before anything is spent: every stage (fine-tuning, generation, judging), offline.

`ptst estimate SPEC` prints it and the budget gate (`ptst.runner._check_budget`) refuses a run above `budget_usd`
with it. Counts are exact (jobs, generations, judge calls follow the plan the runner executes); dollars are upper
bounds: prompts are counted with tiktoken, and every response is priced as if it used all of `max_new_tokens` (the
judge's reply all of its `max_tokens`), so a run never costs more than its estimate at the listed prices. A stage
whose price is unknown is None ("null"), never a guessed zero. Local backends cost no API money; their GPU time is a
rough figure from fixed throughput assumptions, printed with it, because real throughput depends on hardware.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from ptst.backends.base import BackendSpec, FineTuneBackend
from ptst.conversation import Conversation
from ptst.plan import CellKeys, Datasets, PlannedJob, base_model_key, cell_conversations, eval_cells, generation_key
from ptst.spec import Spec
from ptst.types import Estimate, Frozen, ModelRef

__all__ = ["GPU_ASSUMPTION", "JobCost", "RunEstimate", "estimate_run", "usd_text"]

STAGES = ("train", "generate", "judge")
# Rough throughput of one A100-class GPU on a 7B model with LoRA: training tokens (forward + backward) and generated
# tokens (batched decoding). Only an order of magnitude: scale by your own measurements.
TRAIN_TOKENS_PER_S = 2_000.0
DECODE_TOKENS_PER_S = 1_000.0
GPU_ASSUMPTION = (
    f"GPU hours assume ~{TRAIN_TOKENS_PER_S:,.0f} training tokens/s and ~{DECODE_TOKENS_PER_S:,.0f} generated "
    "tokens/s (a 7B model with LoRA on one A100-class GPU), every response at max_new_tokens: a rough figure"
)
# Intermediate checkpoints evaluated per OpenAI job with eval.checkpoints: the API keeps those of the last 3 epochs,
# the final one being the model itself.
OPENAI_CHECKPOINTS = 2


class JobCost(Frozen):
    """One fine-tuning job still to run, with its backend's estimate."""

    backend: str
    model: str
    train_template: str
    seed: int
    run_key: str
    estimate: Estimate


class RunEstimate(Frozen):
    """The whole run's work and cost; `usd` and each stage's USD are None where a price is unknown."""

    jobs: int
    generations: int
    judge_calls: int
    usd: float | None
    usd_by_stage: dict[str, float | None]
    gpu_hours: float | None
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
    """USD and notes of one stage, None once anything in it is unpriced."""

    def __init__(self) -> None:
        self.usd: float | None = 0.0

    def add(self, usd: float | None) -> None:
        self.usd = None if self.usd is None or usd is None else self.usd + usd


def _is_openai(backend: FineTuneBackend) -> bool:
    from ptst.backends.openai.backend import Backend

    return isinstance(backend, Backend)


def _is_local(backend: FineTuneBackend) -> bool:
    from ptst.backends.local.backend import LocalBackend

    return isinstance(backend, LocalBackend)


def _price(model: str, fine_tuned: bool) -> dict[str, Any] | None:
    from ptst.clients.pricing import chat_price

    return chat_price(model, fine_tuned=fine_tuned)


def _usd(tokens_in: int, tokens_out: int, price: dict[str, Any], batch: bool) -> float:
    usd = (tokens_in * float(price["input"]) + tokens_out * float(price["output"])) / 1e6
    return usd / 2 if batch else usd


class _Counter:
    """Prompt tokens of conversations as a chat API counts them, cached (every model sees the same prompts)."""

    def __init__(self, model: str):
        from ptst.clients.tokens import token_counter

        self.counter = token_counter(model)
        self._seen: dict[tuple[str | None, str], int] = {}

    def messages(self, conv: Conversation) -> int:
        from ptst.backends.openai.files import training_messages
        from ptst.clients.tokens import count_message_tokens

        key = (conv.system, conv.user)
        if key not in self._seen:
            self._seen[key] = count_message_tokens(training_messages(conv.without_answer()), self.counter)
        return self._seen[key]

    def judge(self, query: str) -> int:
        """The rubric prompt with the raw query and an empty response (the response is added as its upper bound)."""
        from ptst.clients.tokens import count_message_tokens
        from ptst.judge.rubric import judge_prompt

        key = (None, "\0judge\0" + query)
        if key not in self._seen:
            self._seen[key] = count_message_tokens([{"role": "user", "content": judge_prompt(query, "")}], self.counter)
        return self._seen[key]


def _n_checkpoints(spec: Spec, backend: FineTuneBackend, pj: PlannedJob) -> int:
    """Intermediate checkpoints a job's model will be evaluated at, when the spec evaluates checkpoints."""
    wanted = spec.eval.checkpoints
    if wanted == "none":
        return 0
    if _is_openai(backend):
        return OPENAI_CHECKPOINTS if wanted == "all" else min(len(wanted), OPENAI_CHECKPOINTS)
    saved = pj.job.hyperparameters.save_steps
    return len(saved) if wanted == "all" else len(set(saved) & set(wanted))


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
    from ptst.judge.rubric import Judge as Rubric

    cfg = spec.eval.generation
    rubric = Rubric.Options.model_validate(spec.judge.options) if spec.judge.kind == "rubric" else None
    judge_price = _price(rubric.model, False) if rubric is not None else None
    judge_counter = _Counter(rubric.model) if rubric is not None else None
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
    train_tokens = decode_tokens = 0
    any_local = False
    for bspec, backend in backends:
        openai, local = _is_openai(backend), _is_local(backend)
        any_local |= local
        batch = bool(getattr(backend.options, "batch", False))
        counter = _Counter(bspec.model) if openai else None
        # (model key, fine-tuned?, checkpoints): every model whose cells this run generates
        models: list[tuple[str, bool, int]] = []
        if spec.eval.evaluate_base or spec.train is None:
            models.append((base_model_key(bspec, backend), bspec.model.startswith("ft:"), 0))
        for pj in planned.get(bspec.name, []):
            rec = store.job(pj.run_key) if store is not None else None
            if rec is not None and rec.status not in ("succeeded", "error") and not retry_failed:
                continue  # the runner skips a failed job unless --retry-failed (an "error" is retried by a re-run)
            if rec is None or rec.status != "succeeded":
                est = backend.estimate(pj.job)
                jobs.append(JobCost(backend=bspec.name, model=bspec.model, train_template=pj.job.train_template,
                                    seed=pj.job.seed, run_key=pj.run_key, estimate=est))
                stages["train"].add(est.usd)
                train_tokens += est.n_billed_tokens or 0
            models.append((pj.run_key, True, _n_checkpoints(spec, backend, pj)))
        stub = ModelRef(backend=bspec.name, base_model=bspec.model, model_id=bspec.model)
        price = {ft: _price(bspec.model, ft) for ft in (False, True)} if openai else {}
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
                n_gen += len(todo) * times
                decode_tokens += len(todo) * times * cfg.max_new_tokens
                if openai:
                    assert counter is not None
                    p = price[fine_tuned]
                    if p is None and todo:
                        stages["generate"].add(None)
                        notes.append(f"no chat price for {bspec.model}{' (fine-tuned)' if fine_tuned else ''}: "
                                     "generation cost unknown; add it to ptst/resources/prices.json")
                    elif p is not None:
                        tin = sum(counter.messages(c) for c in todo) * times
                        stages["generate"].add(_usd(tin, len(todo) * times * cfg.max_new_tokens, p, batch))
                elif todo and not (local or backend.simulated):
                    stages["generate"].add(None)  # a plugin's remote API: its prices are not ptst's to know
                if cell.kind == "safety" and rubric is not None:
                    n = len(judged_todo) * times
                    n_judge += n
                    if judge_price is None and n:
                        stages["judge"].add(None)
                    elif judge_price is not None:
                        assert judge_counter is not None
                        tin = sum(judge_counter.judge(c.query) + cfg.max_new_tokens for c in judged_todo) * times
                        stages["judge"].add(_usd(tin, n * rubric.max_tokens, judge_price, rubric.batch))
        if openai and batch:
            notes.append(f"{bspec.name}: generation through the Batch API, billed at half price")
        if openai and counter is not None and not counter.counter.exact:
            notes.append(f"{bspec.name}: {counter.counter.note}")
    if rubric is not None:
        if judge_price is None:
            notes.append(f"no chat price for judge model {rubric.model}: judging cost unknown")
        notes.append(f"judge {rubric.model}: each call priced as the rubric prompt + a response of max_new_tokens "
                     f"({cfg.max_new_tokens}) in, the judge's max_tokens ({rubric.max_tokens}) out (lower it to "
                     "tighten the bound); "
                     "parse retries not counted"
                     + ("; Batch API, half price" if rubric.batch else ""))
    if any(_is_openai(b) for _, b in backends):
        notes.append(f"generation priced with every response at max_new_tokens ({cfg.max_new_tokens}): an upper bound")
    if spec.eval.checkpoints != "none":
        notes.append(f"checkpoints: each job's intermediate checkpoints are evaluated too (OpenAI: "
                     f"{OPENAI_CHECKPOINTS} assumed; local: one per save_steps entry)")
    gpu_hours = None
    if any_local:
        gpu_hours = round((train_tokens / TRAIN_TOKENS_PER_S + decode_tokens / DECODE_TOKENS_PER_S) / 3600, 3)
        notes.append(GPU_ASSUMPTION)
    by_stage = {s: (None if st.usd is None else round(st.usd, 6)) for s, st in stages.items()}
    return RunEstimate(
        jobs=len(jobs), generations=n_gen, judge_calls=n_judge, usd=_sum(list(by_stage.values())),
        usd_by_stage=by_stage, gpu_hours=gpu_hours, notes=tuple(dict.fromkeys(notes)), train=tuple(jobs),
    )


def _unjudged(store: Any, judge_id: tuple[str, str], convs: Sequence[Conversation], keys: Sequence[str],
              have: set[str]) -> list[Conversation]:
    """Generated conversations without the current judge's verdict (judging them is still to pay)."""
    from ptst.collect import judgment_keys

    items = [(k, c.query, c.reference) for k, c in zip(keys, convs, strict=True)]
    jk = judgment_keys(judge_id[0], judge_id[1], items, store.responses(k for k in keys if k in have))
    done = store.judgments(jk.values())
    return [c for c, k in zip(convs, keys, strict=True) if k in jk and jk[k] not in done]

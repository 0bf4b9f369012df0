"""Execute a spec: plan it as a graph of work, run everything independent at once, record each result as it arrives.

The runner loads the data, checks the budget and the preflight, and builds the graph (`ptst.graph`); backends own
vendor work; `ptst.scheduler` owns concurrency. The graph is
fine-tuning job -> generation per cell -> judging per cell: every job starts up front (bounded per backend by
`max_concurrent_jobs`, one at a time per local device), a cell generates as soon as its model exists, and a cell is
judged (by every judge of the spec) while the next generates, so wall time is about the longest chain. With
`eval.checkpoints`, a finished job's saved checkpoints join the graph as models of their own. Every step is looked
up by its key first, so re-running a finished command does nothing, and a killed run resumes having lost at most the
requests in flight (each chunk of responses and verdicts is committed as it arrives) and paid for nothing twice.
Results are always rebuilt from the store (`ptst.collect`), never from in-memory state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from ptst.backends.base import create_backend
from ptst.collect import (
    collect,
    collect_results,
    export_rows,
    item_records,
    run_info,
)
from ptst.data import DatasetRef, Example, load, sample
from ptst.errors import BudgetExceeded
from ptst.graph import Graph
from ptst.judge.base import Judge
from ptst.metrics import join_metrics, split_metrics
from ptst.plan import (
    CellKeys,
    Datasets,
    JudgmentKeys,
    PlannedJob,
    plan_digest,
    train_jobs,
)
from ptst.progress import RunProgress, connect_backends, log
from ptst.records import RunInfo
from ptst.report import figure_process
from ptst.results import Results
from ptst.scheduler import Scheduler
from ptst.spec import ExtraData, SafetyMix, Spec
from ptst.store import RunStore
from ptst.store.scrub import known_secrets

__all__ = ["collect_results", "export_rows", "item_records", "load_datasets", "run", "run_experiment"]


def data_dirs(spec: Spec, spec_dir: Path | None) -> list[Path]:
    """The spec's data_dir, relative to the spec file; the loader adds $PTST_DATA_DIR after it."""
    if not spec.data_dir:
        return []
    d = Path(spec.data_dir)
    return [d if d.is_absolute() or spec_dir is None else spec_dir / d]


def _resolve(ref: DatasetRef, spec_dir: Path | None) -> DatasetRef:
    """Relative dataset paths in a spec are relative to the spec file, not to the working directory."""
    if ref.path and spec_dir is not None and not Path(ref.path).is_absolute():
        return ref.model_copy(update={"path": str(spec_dir / ref.path)})
    return ref


def train_floor(spec: Spec) -> tuple[int, str]:
    """The fewest training rows every backend of the spec accepts (its `min_train_examples`), and the kind asking
    for the most: `--limit N` keeps at least that many training rows so the smoke run can run at all."""
    from ptst.backends.registry import backend_class

    floors = [(backend_class(b.kind).min_train_examples, b.kind) for b in spec.backends]
    return max(floors, default=(1, ""))


def limit_note(spec: Spec, limit: int) -> str:
    """What `--limit N` does to this spec, in one line (printed by `run` and `estimate`)."""
    floor, kind = train_floor(spec)
    note = f"--limit {limit}: only the first {limit} rows of every dataset"
    if spec.train is not None and floor > limit:
        note += f", but training keeps the first {floor} (the {kind} fine-tuning API needs at least {floor} examples)"
    return note + "; a smoke run, not a measurement"


P = TypeVar("P", SafetyMix | None, ExtraData)  # a part of the training data: a safety mix (or none) or an extra


def limit_datasets(spec: Spec, limit: int) -> Spec:
    """The spec with every dataset cut to its first `limit` rows (`ptst run --limit`): train, extra, safety_mix, safety and
    tasks; the training data to no fewer rows than every backend accepts (`train_floor`). Kept in the spec the run
    records, so a limited run's results say so."""
    def cut(ref: DatasetRef, n: int = limit) -> DatasetRef:
        return ref.model_copy(update={"limit": min(ref.limit, n) if ref.limit is not None else n})

    ev = spec.eval.model_copy(update={"safety": [cut(r) for r in spec.eval.safety],
                                      "tasks": [cut(r) for r in spec.eval.tasks]})
    train = spec.train
    if train is not None:
        def cut_part(part: P) -> P:
            """A safety mix or an extra dataset (None: no mix) with its dataset cut."""
            return None if part is None else part.model_copy(update={"dataset": cut(part.dataset)})

        m = train.safety_mix
        mix = [cut_part(x) for x in m] if isinstance(m, list) else cut_part(m)
        train = train.model_copy(update={"dataset": cut(train.dataset, max(limit, train_floor(spec)[0])),
                                         "extra": [cut_part(x) for x in train.extra], "safety_mix": mix})
    return spec.model_copy(update={"eval": ev, "train": train})


def load_datasets(
    spec: Spec, spec_dir: Path | None = None, limit: int | None = None, *, loader: Callable[..., list[Example]] = load
) -> Datasets:
    """Every dataset the spec reads, loaded once; `limit` keeps the first N rows of each (see `limit_datasets`).
    `loader` replaces `ptst.data.load` (`ptst estimate` passes one that stands in for data not on this machine)."""
    if limit is not None:
        spec = limit_datasets(spec, limit)
    dirs = data_dirs(spec, spec_dir)
    train: tuple = ()
    mixes: list[tuple[str | None, tuple]] = []
    if spec.train is not None:
        def rows(ref: DatasetRef, n: int | None = None) -> tuple[Example, ...]:
            """Training rows of `ref`: all of them, or a seeded sample of `n` (safety mixes, extra datasets)."""
            got = loader(_resolve(ref, spec_dir), data_dirs=dirs, require_answer=True)
            return tuple(sample(got, n, seed=0) if n is not None and n < len(got) else got)

        base = rows(spec.train.dataset) + tuple(e for x in spec.train.extra for e in rows(x.dataset, x.n))
        for m in spec.train.mixes:
            mixes.append((None if m is None else m.name, base + (() if m is None else rows(m.dataset, m.n))))
        train = mixes[0][1]
    safety = {ref.display_name(): tuple(loader(_resolve(ref, spec_dir), data_dirs=dirs)) for ref in spec.eval.safety}
    tasks: dict[str, tuple[tuple[Example, ...], str]] = {}
    for ref in spec.eval.tasks:  # a dataset listed twice (other metrics) is one cell scored by each metric
        name = ref.display_name()
        if name in tasks:
            items, metrics = tasks[name]
            tasks[name] = (items, join_metrics([*split_metrics(metrics), *ref.metric_names()]))
        else:
            items = tuple(loader(_resolve(ref, spec_dir), data_dirs=dirs, require_answer=True))
            tasks[name] = (items, join_metrics(ref.metric_names()))
    return Datasets(train=train, safety=safety, tasks=tasks, train_mixes=tuple(mixes))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(spec: Spec, out: Path, *, spec_dir: Path | None = None, yes: bool = False, retry_failed: bool = False,
        fresh: bool = False) -> Results:
    return run_experiment(spec, out, spec_dir=spec_dir, yes=yes, retry_failed=retry_failed, fresh=fresh)[0]


def run_experiment(
    spec: Spec, out: Path, *, spec_dir: Path | None = None, yes: bool = False, retry_failed: bool = False,
    limit: int | None = None, overrides: Sequence[str] = (), judgment_memo: JudgmentKeys | None = None,
    fresh: bool = False,
) -> tuple[Results, RunInfo]:
    """Run (or resume) a spec into `out`; the RunInfo's status says whether everything finished. `limit` (a smoke
    run) keeps the first N rows of every dataset, recorded in the stored spec and the store's `limit` meta.
    `judgment_memo`: the run's judgment keys are kept there, for the caller's reports to find the verdicts by.
    `fresh`: start over in a folder whose store was lost (refused without it: its work would be bought again)."""
    from ptst.judging import create_judges
    from ptst.preflight import WARNING, preflight

    connect_backends()  # the progress callback and log lines backends report through (ptst.backends.api)
    if limit is not None:
        spec = limit_datasets(spec, limit)
        log(limit_note(spec, limit))
    # everything checkable is checked before anything is spent (and an unreachable hub before any download retries)
    preflight(spec, spec_dir, for_run=True).raise_for_errors(spec.name)
    # Every judge of `judges:`, the primary first, built with the endpoints of the spec's backends (`base_url:
    # inherit`); the budget gate below prices each of them.
    judges = create_judges(spec)
    for judge in judges:  # a judge's own warnings (the rubric judge sent to OpenAI while the backends are elsewhere)
        for line in judge.preflight():
            if line.startswith(WARNING):
                log(line)
    data = load_datasets(spec, spec_dir)
    backends = [(b, create_backend(b)) for b in spec.backends]
    simulated = any(b.simulated for _, b in backends) or any(j.simulated for j in judges)
    if simulated:
        from ptst.report import SIMULATED_BANNER

        log(SIMULATED_BANNER)
    with RunStore.open(out, fresh=fresh, secrets=known_secrets(spec.model_dump(mode="json"))) as store:
        store.set_meta("spec", spec.model_dump(mode="json"))
        store.set_meta("spec_name", spec.name)
        store.set_meta("limit", limit)
        store.set_meta("overrides", list(overrides))  # the `--set KEY=VALUE`s already applied to `spec`
        store.set_meta("simulated", simulated)
        store.set_meta("train_templates", list(spec.train.templates) if spec.train else [])
        store.set_meta("test_templates", list(spec.eval.templates))
        names = set(spec.eval.templates) | set(spec.train.templates if spec.train else [])
        store.set_meta("safety_templates", sorted(n for n in names if spec.template(n).safety))
        # the judges results are read with; "judge" (the primary) is what a single-judge reader knows
        store.set_meta("judge", {"name": judges[0].name, "version": judges[0].version})
        store.set_meta("judges", [{"name": j.name, "version": j.version} for j in judges])
        digest = plan_digest(spec, data, backends, [(j.name, j.version) for j in judges])
        finished = store.finished_results(digest)
        if finished is not None:  # this plan finished before, and nothing in the store changed since
            status, stored = finished
            log(f"nothing to do: every result of this spec is already in {out} (the reports are read from there)")
            return Results.model_validate(stored), run_info(store, status=status)

        planned = {bspec.name: train_jobs(spec, bspec, backend, data) for bspec, backend in backends}
        expected: dict[str, float | None] = {}
        cell_keys = CellKeys(spec, data)  # one hash per response, shared by the estimate and the graph
        usd = _check_budget(spec, store, backends, planned, yes, retry_failed, data=data, cell_keys=cell_keys,
                            stages=expected, judges=judges)
        if store.get_meta("started_at") is None:
            store.set_meta("started_at", _now())
        store.set_meta("finished_at", None)  # until this run finishes: a killed run reads as unfinished
        graph = Graph(spec, store, data, judges, out, retry_failed, usd, cell_keys)
        if judgment_memo is not None:
            graph.judgment_keys = judgment_memo
        tasks = graph.plan(backends, planned)
        if any(graph.totals.values()):  # new results: the reports will be redrawn, so load the plotting code now
            figure_process.start()
        with RunProgress(graph.totals, expected_usd=expected) as progress:
            for usd_done in store.costs("train"):  # money spent by earlier runs on this folder counts too
                progress.spend("train", usd_done)
            graph.progress = progress
            scheduler = Scheduler(graph.limits)
            scheduler.submit(tasks)
            scheduler.run()
        store.set_meta("finished_at", _now())
        results, info = collect(store, graph.judgment_keys)
        if info.status in ("complete", "complete_limited"):
            store.record_finished(digest, info.status, results.model_dump(mode="json"))
        return results, info


def _check_budget(
    spec: Spec, store: RunStore, backends, planned: dict[str, list[PlannedJob]], yes: bool, retry_failed: bool,
    *, data: Datasets | None = None, cell_keys: CellKeys | None = None, stages: dict[str, float | None] | None = None,
    judges: Sequence[Judge] | None = None,
) -> dict[str, float | None]:
    """Refuse a run whose remaining work (jobs to run, generations and verdicts missing from the store) is estimated
    above budget_usd, or cannot be priced, unless --yes; return each job-to-run's USD, recorded as its cost once it
    produces a model. Every judge of `judges:` is priced (each paid one by its own `judging_usd`), wherever it stands."""
    from ptst.estimate import estimate_run, usd_text

    if data is None:
        data = Datasets(train=(), safety={}, tasks={})
    est = estimate_run(spec, data, backends, planned, store=store, retry_failed=retry_failed, cell_keys=cell_keys,
                       judges=judges)
    usd: dict[str, float | None] = {j.run_key: j.estimate.usd for j in est.train}
    if stages is not None:  # each stage's expected cost, for the progress view
        stages.update(est.usd_by_stage)
    if spec.budget_usd is None or yes:
        return usd
    unpriced = [j for j in est.train if j.estimate.usd is None]
    if unpriced:
        raise BudgetExceeded(
            f"no price known for {unpriced[0].backend}/{unpriced[0].model}, so budget_usd cannot be checked; add the "
            "model to the backend's `prices` option or pass --yes"
        )
    if est.usd is None:
        stage = next(s for s, v in est.usd_by_stage.items() if v is None)
        what = {"generate": "generation", "judge": "judging"}.get(stage, stage)
        raise BudgetExceeded(
            f"no {what} price known, so budget_usd cannot be checked ({next(iter(est.notes), 'see ptst estimate')}); "
            "pass --yes to run anyway"
        )
    if est.usd > spec.budget_usd:
        parts = ", ".join(f"{name} {usd_text(est.usd_by_stage[s])}" for s, name in
                          (("train", "fine-tuning"), ("generate", "generation"), ("judge", "judging")))
        raise BudgetExceeded(
            f"estimated cost {usd_text(est.usd)} ({parts}; at most {usd_text(est.usd_max)}) exceeds budget_usd "
            f"{usd_text(spec.budget_usd)}; "
            "raise budget_usd in the spec or pass --yes (see `ptst estimate SPEC`)"
        )
    return usd

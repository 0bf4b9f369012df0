"""Execute a spec: plan it as a graph of work, run everything independent at once, record each result as it arrives.

The runner owns the plan and persistence; backends own vendor work; `ptst.scheduler` owns concurrency. The graph is
fine-tuning job -> generation per cell -> judging per cell: every job starts up front (bounded per backend by
`max_concurrent_jobs`, one at a time per local device), a cell generates as soon as its model exists, and a cell is
judged (by every judge of the spec) while the next generates, so wall time is about the longest chain. With
`eval.checkpoints`, a finished job's saved checkpoints join the graph as models of their own. Every step is looked
up by its key first, so re-running a finished command does nothing, and a killed run resumes having lost at most the
requests in flight (each chunk of responses and verdicts is committed as it arrives) and paid for nothing twice. Results are always
rebuilt from the store (`ptst.collect`), never from in-memory state.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ptst.backends.base import BackendSpec, FineTuneBackend, create_backend
from ptst.collect import (
    collect,
    collect_results,
    export_rows,
    item_records,
    judgment_keys,
)
from ptst.conversation import Conversation
from ptst.data import DatasetRef, load, sample
from ptst.errors import BackendError, BudgetExceeded, JobFailed
from ptst.judge.base import Judge, JudgeItem, create_judge
from ptst.plan import (
    Cell,
    Datasets,
    PlannedJob,
    base_model_key,
    cell_categories,
    cell_conversations,
    checkpoint_model_key,
    chunks,
    eval_cells,
    generation_key,
    train_jobs,
)
from ptst.progress import RunProgress, log
from ptst.records import RunInfo
from ptst.results import Results
from ptst.scheduler import Claims, Scheduler, Task
from ptst.spec import Spec
from ptst.store import JobRecord, Judged, RunStore
from ptst.types import ModelRef

__all__ = ["collect_results", "export_rows", "item_records", "load_datasets", "run", "run_experiment"]

JUDGE_CHUNK = 64
# Remote fine-tuning jobs waiting at once, per backend: all of them unless the spec says `max_concurrent_jobs` (for
# accounts with low limits), so the wall time of a grid is the longest job, not the sum.
DEFAULT_MAX_CONCURRENT_JOBS: int | None = None
REMOTE_GENERATION_CALLS = 4  # concurrent `generate` calls per remote backend (each may fan out further inside)
JUDGE_CALLS = 2  # concurrent `judge` calls (each may fan out further inside)


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


def limit_datasets(spec: Spec, limit: int) -> Spec:
    """The spec with every dataset cut to its first `limit` rows (`ptst run --limit`): train, safety_mix, safety and
    tasks. Kept in the spec the run records, so a limited run's results say so."""
    def cut(ref: DatasetRef) -> DatasetRef:
        return ref.model_copy(update={"limit": min(ref.limit, limit) if ref.limit is not None else limit})

    ev = spec.eval.model_copy(update={"safety": [cut(r) for r in spec.eval.safety],
                                      "tasks": [cut(r) for r in spec.eval.tasks]})
    train = spec.train
    if train is not None:
        mix = train.safety_mix
        if mix is not None:
            mix = mix.model_copy(update={"dataset": cut(mix.dataset)})
        train = train.model_copy(update={"dataset": cut(train.dataset), "safety_mix": mix})
    return spec.model_copy(update={"eval": ev, "train": train})


def load_datasets(spec: Spec, spec_dir: Path | None = None, limit: int | None = None) -> Datasets:
    """Every dataset the spec reads, loaded once; `limit` keeps the first N rows of each (see `limit_datasets`)."""
    if limit is not None:
        spec = limit_datasets(spec, limit)
    dirs = data_dirs(spec, spec_dir)
    train: tuple = ()
    if spec.train is not None:
        train = tuple(load(_resolve(spec.train.dataset, spec_dir), data_dirs=dirs, require_answer=True))
        if spec.train.safety_mix is not None:
            mix = load(_resolve(spec.train.safety_mix.dataset, spec_dir), data_dirs=dirs, require_answer=True)
            n = spec.train.safety_mix.n
            train += tuple(sample(mix, n, seed=0) if n is not None and n < len(mix) else mix)
    safety = {ref.display_name(): tuple(load(_resolve(ref, spec_dir), data_dirs=dirs)) for ref in spec.eval.safety}
    tasks = {
        ref.display_name(): (tuple(load(_resolve(ref, spec_dir), data_dirs=dirs, require_answer=True)), ref.metric_name() or "")
        for ref in spec.eval.tasks
    }
    return Datasets(train=train, safety=safety, tasks=tasks)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(spec: Spec, out: Path, *, spec_dir: Path | None = None, yes: bool = False, retry_failed: bool = False) -> Results:
    return run_experiment(spec, out, spec_dir=spec_dir, yes=yes, retry_failed=retry_failed)[0]


def run_experiment(
    spec: Spec, out: Path, *, spec_dir: Path | None = None, yes: bool = False, retry_failed: bool = False,
    limit: int | None = None,
) -> tuple[Results, RunInfo]:
    """Run (or resume) a spec into `out`; the RunInfo's status says whether everything finished. `limit` (a smoke
    run) keeps the first N rows of every dataset, recorded in the stored spec and the store's `limit` meta."""
    from ptst.judge.rubric import judge_endpoint_warning, resolve_judge_spec
    from ptst.preflight import preflight

    if limit is not None:
        spec = limit_datasets(spec, limit)
        log(f"--limit {limit}: only the first {limit} rows of every dataset; a smoke run, not a measurement")
    preflight(spec, spec_dir).raise_for_errors(spec.name)  # everything checkable is checked before anything is spent
    warning = judge_endpoint_warning(spec)
    if warning:
        log(f"warning: {warning}")
    data = load_datasets(spec, spec_dir)
    backends = [(b, create_backend(b)) for b in spec.backends]
    # Each judge resolved on its own (a rubric judge's `base_url: inherit`); the first is the primary judge.
    judges = [create_judge(resolve_judge_spec(spec.model_copy(update={"judge": js}))) for js in spec.judge_specs]
    simulated = any(b.simulated for _, b in backends) or any(j.simulated for j in judges)
    if simulated:
        from ptst.report import SIMULATED_BANNER

        log(SIMULATED_BANNER)
    with RunStore.open(out) as store:
        store.set_meta("spec", spec.model_dump(mode="json"))
        store.set_meta("spec_name", spec.name)
        store.set_meta("limit", limit)
        store.set_meta("simulated", simulated)
        store.set_meta("train_templates", list(spec.train.templates) if spec.train else [])
        store.set_meta("test_templates", list(spec.eval.templates))
        names = set(spec.eval.templates) | set(spec.train.templates if spec.train else [])
        store.set_meta("safety_templates", sorted(n for n in names if spec.template(n).safety))
        # the judges results are read with; "judge" (the primary) is what a single-judge reader knows
        store.set_meta("judge", {"name": judges[0].name, "version": judges[0].version})
        store.set_meta("judges", [{"name": j.name, "version": j.version} for j in judges])

        planned = {bspec.name: train_jobs(spec, bspec, backend, data) for bspec, backend in backends}
        usd = _check_budget(spec, store, backends, planned, yes, retry_failed, data=data)
        if store.get_meta("started_at") is None:
            store.set_meta("started_at", _now())
        store.set_meta("finished_at", None)  # until this run finishes: a killed run reads as unfinished
        graph = _Graph(spec, store, data, judges, out, retry_failed, usd)
        tasks = graph.plan(backends, planned)
        with RunProgress(graph.totals) as progress:
            for usd_done in store.costs("train"):  # money spent by earlier runs on this folder counts too
                progress.spend("train", usd_done)
            graph.progress = progress
            scheduler = Scheduler(graph.limits)
            scheduler.submit(tasks)
            scheduler.run()
        store.set_meta("finished_at", _now())
        return collect(store)


def _check_budget(
    spec: Spec, store: RunStore, backends, planned: dict[str, list[PlannedJob]], yes: bool, retry_failed: bool,
    *, data: Datasets | None = None,
) -> dict[str, float | None]:
    """Refuse a run whose remaining work (jobs to run, generations and verdicts missing from the store) is estimated
    above budget_usd, or cannot be priced, unless --yes; return each job-to-run's USD, recorded as its cost once it
    produces a model."""
    from ptst.estimate import estimate_run, usd_text

    if data is None:
        data = Datasets(train=(), safety={}, tasks={})
    est = estimate_run(spec, data, backends, planned, store=store, retry_failed=retry_failed)
    usd: dict[str, float | None] = {j.run_key: j.estimate.usd for j in est.train}
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
            f"estimated cost {usd_text(est.usd)} ({parts}) exceeds budget_usd {usd_text(spec.budget_usd)}; "
            "raise budget_usd in the spec or pass --yes (see `ptst estimate SPEC`)"
        )
    return usd


CellWork = tuple[Cell, list[Conversation], list[str]]  # a cell, its conversations, their generation keys


@dataclass
class _Model:
    """A model cells are generated from: known (base, or trained earlier) or the outcome of a job in this run."""

    key: str
    ref: ModelRef | None  # None until its job finishes
    job: PlannedJob | None
    cells: list[CellWork]
    checkpoint: int | None = None  # the training step of an intermediate checkpoint


class _Graph:
    """The run's work as tasks: one per job, per cell's generation and per cell's judging."""

    def __init__(self, spec: Spec, store: RunStore, data: Datasets, judges: list[Judge], out: Path,
                 retry_failed: bool, usd: dict[str, float | None]):
        self.spec, self.store, self.data, self.judges, self.out = spec, store, data, judges, out
        self.retry_failed, self.usd = retry_failed, usd
        self.limits: dict[str, int] = {"judge": JUDGE_CALLS}
        self.totals = {"train": 0, "generate": 0, "judge": 0}
        self.claims = Claims()
        self.progress: RunProgress | None = None
        self._judge_planned: dict[str, int] = {}
        self._positions = itertools.count(1)  # next() is atomic: train tasks index checkpoint cells concurrently

    # -- planning --------------------------------------------------------------------------------------------------
    def plan(self, backends: list[tuple[BackendSpec, FineTuneBackend]], planned: dict[str, list[PlannedJob]]) -> list[Task]:
        """Index every cell we can produce (one transaction) and return the tasks that start the run."""
        rows, tasks = [], []
        for bspec, backend in backends:
            self._slots(bspec, backend)
            models: list[_Model] = []
            if self.spec.eval.evaluate_base or self.spec.train is None:
                models.append(_Model(base_model_key(bspec, backend), backend.base_model(), None, []))
            for pj in planned[bspec.name]:
                rec = self.store.job(pj.run_key)
                if rec is not None and rec.status == "succeeded" and rec.model_ref is not None:
                    ref = ModelRef.model_validate(rec.model_ref)
                    models.append(_Model(pj.run_key, ref, None, []))
                    for step, ck in self._checkpoints(backend, ref, pj.run_key):
                        models.append(_Model(checkpoint_model_key(pj.run_key, step), ck, None, [], step))
                elif rec is not None and not self.retry_failed:
                    job = pj.job
                    log(f"skip {job.backend} {job.train_template} seed {job.seed}: job {rec.status} earlier "
                        f"({rec.message}); use --retry-failed to try again")
                else:
                    # The model's identity is known before it exists, so its cells are indexed up front.
                    stub = ModelRef(backend=bspec.name, base_model=bspec.model, model_id="",
                                    train_template=pj.job.train_template, seed=pj.job.seed)
                    models.append(_Model(pj.run_key, None, pj, []))
                    models[-1].cells = self._cells(bspec, backend, stub, pj.run_key)
                    self.totals["train"] += 1
            for m in models:
                if m.ref is not None:
                    m.cells = self._cells(bspec, backend, m.ref, m.key, m.checkpoint)
                rows += [self._row(cell, convs, keys) for cell, convs, keys in m.cells]
                if m.ref is not None:
                    tasks += [self._generate_task(backend, cell, m.ref, convs, keys) for cell, convs, keys in m.cells]
                else:
                    tasks.append(self._train_task(bspec, backend, m))
        self.store.replace_cells(rows)
        gen, judge = self._count(rows)
        self.totals["generate"] += gen
        self.totals["judge"] += judge
        return tasks

    def _slots(self, bspec: BackendSpec, backend: FineTuneBackend) -> None:
        limit = bspec.max_concurrent_jobs or DEFAULT_MAX_CONCURRENT_JOBS
        if limit is not None:
            self.limits[f"jobs:{bspec.name}"] = limit
        res = backend.resource()
        if res is not None:
            self.limits[f"resource:{res}"] = 1
        else:
            self.limits[f"generate:{bspec.name}"] = REMOTE_GENERATION_CALLS

    def _row(self, cell: Cell, convs: list[Conversation], keys: list[str]):
        """A cell's index row; positions follow the plan, checkpoints found later after every planned cell."""
        cats = cell_categories(cell, self.data)
        return (cell.key, cell.describe(), next(self._positions),
                [(k, c.query, c.reference, cat) for k, c, cat in zip(keys, convs, cats, strict=True)])

    def _checkpoints(self, backend: FineTuneBackend, ref: ModelRef, run_key: str) -> list[tuple[int, ModelRef]]:
        """The checkpoints of a fine-tuned model the spec asks for (`eval.checkpoints`), as (step, model). Listing
        them can fail (a vendor's API): recorded as a failure of the run, and the final model is evaluated anyway."""
        if self.spec.eval.checkpoints == "none":
            return []
        what = f"checkpoints of {ref.backend} {ref.train_template} seed {ref.seed}"
        try:
            found = backend.checkpoints(ref)
        except BackendError as e:
            log(f"  listing the {what} failed: {e} — recorded; continuing with the final model")
            self.store.put_failure(f"checkpoints:{run_key}", "checkpoints", what, str(e))
            return []
        self.store.clear_failure(f"checkpoints:{run_key}")
        # A save at the very last step is the final model itself (a local backend lists it): evaluated once, as final.
        found = [c for c in found if c.model_id != ref.model_id
                 and (c.adapter_dir is None or c.adapter_dir != ref.adapter_dir)]
        chosen = [(int(c.meta["step"]), c) for c in found
                  if isinstance(c.meta.get("step"), int) and self.spec.eval.wants_checkpoint(int(c.meta["step"]))]
        if isinstance(self.spec.eval.checkpoints, list):
            missing = sorted(set(self.spec.eval.checkpoints) - {s for s, _ in chosen})
            if missing:
                log(f"warning: no checkpoint at step(s) {', '.join(map(str, missing))} among the {what} "
                    f"(saved: {', '.join(str(c.meta.get('step')) for c in found) or 'none'})")
        return chosen

    def _cells(self, bspec: BackendSpec, backend: FineTuneBackend, model: ModelRef, model_key: str,
               checkpoint: int | None = None) -> list[CellWork]:
        out = []
        for cell in eval_cells(self.spec, bspec, model, model_key, self.data, checkpoint=checkpoint):
            convs = cell_conversations(self.spec, cell, backend.family, self.data)
            out.append((cell, convs, [generation_key(cell.model_key, c, self.spec.eval.generation) for c in convs]))
        return out

    def _count(self, rows) -> tuple[int, int]:
        """Totals for the progress view: responses still missing, and safety items still without each judge's
        verdict."""
        keys = {it[0] for _, _, _, items in rows for it in items}
        have = self.store.responses(keys)
        total_judge = 0
        for key, desc, _, items in rows:
            if desc["kind"] != "safety":
                continue
            n = 0
            triples = [it[:3] for it in items]
            for judge in self.judges:
                jk = judgment_keys(judge.name, judge.version, triples, have)
                n += len({g for g, _, _ in triples}) - len(self.store.judgments(jk.values()))
            self._judge_planned[key] = n
            total_judge += n
        return len(keys) - len(have), total_judge

    # -- tasks -----------------------------------------------------------------------------------------------------
    def _train_task(self, bspec: BackendSpec, backend: FineTuneBackend, m: _Model) -> Task:
        res = backend.resource()
        slots = (f"jobs:{bspec.name}",) + ((f"resource:{res}",) if res is not None else ())
        assert m.job is not None

        def work() -> list[Task]:
            ref = self._fine_tune(backend, m.job)  # type: ignore[arg-type]
            assert self.progress is not None
            self.progress.advance("train")
            if ref is None:
                self.store.drop_cells(c.key for c, _, _ in m.cells)
                self.progress.add_total("generate", -sum(len(set(k)) for _, _, k in m.cells))
                self.progress.add_total("judge", -sum(self._judge_planned.get(c.key, 0) for c, _, _ in m.cells))
                return []
            tasks = [self._generate_task(backend, cell, ref, convs, keys) for cell, convs, keys in m.cells]
            return tasks + self._checkpoint_tasks(bspec, backend, ref, m.job.run_key)  # type: ignore[union-attr]

        return Task(f"train {bspec.name} {m.job.job.train_template} seed {m.job.job.seed}", work, slots)

    def _checkpoint_tasks(self, bspec: BackendSpec, backend: FineTuneBackend, ref: ModelRef, run_key: str) -> list[Task]:
        """After a job: index the cells of the checkpoints the spec asks for, and return their generation tasks."""
        tasks: list[Task] = []
        for step, ck in self._checkpoints(backend, ref, run_key):
            cells = self._cells(bspec, backend, ck, checkpoint_model_key(run_key, step), step)
            rows = [self._row(cell, convs, keys) for cell, convs, keys in cells]
            for key, desc, position, items in rows:
                self.store.put_cell(key, desc, position, items)
            gen, judge = self._count(rows)
            assert self.progress is not None
            self.progress.add_total("generate", gen)
            self.progress.add_total("judge", judge)
            tasks += [self._generate_task(backend, cell, ck, convs, keys) for cell, convs, keys in cells]
        return tasks

    def _fine_tune(self, backend: FineTuneBackend, pj: PlannedJob) -> ModelRef | None:
        job = pj.job
        log(f"fine-tune {job.backend} {job.base_model} on {job.train_template} (seed {job.seed}, "
            f"{len(job.examples)} examples)")
        workdir = self.out / "models" / pj.run_key
        workdir.mkdir(parents=True, exist_ok=True)
        base: dict[str, Any] = {"key": pj.run_key, "backend": job.backend, "base_model": job.base_model,
                                "train_template": job.train_template, "seed": job.seed}
        try:
            ref = backend.fine_tune(job, self.store, workdir)
        except BackendError as e:  # JobFailed, or the job could not be run at all: recorded, the others go on
            status, code = (e.status, e.code) if isinstance(e, JobFailed) else ("error", None)
            log(f"  {job.backend} {job.train_template} seed {job.seed}: {e} — recorded; continuing with the other cells")
            self.store.put_job(JobRecord(**base, status=status, model_ref=None, code=code, message=str(e)))
            return None
        usd = self.usd.get(pj.run_key)
        self.store.put_job(JobRecord(**base, status="succeeded", model_ref=ref.model_dump(mode="json"), code=None,
                                     message=None), usd=usd)
        assert self.progress is not None
        self.progress.spend("train", usd)
        log(f"  {job.backend} {job.train_template} seed {job.seed}: model ready")
        return ref

    def _generate_task(self, backend: FineTuneBackend, cell: Cell, model: ModelRef, convs: list[Conversation],
                       keys: list[str]) -> Task:
        res = backend.resource()
        slots = (f"resource:{res}",) if res is not None else (f"generate:{cell.backend}",)

        def work() -> list[Task]:
            have = self.store.responses(keys)
            todo = {k: c for k, c in zip(keys, convs, strict=True) if k not in have}
            mine = self.claims.claim(todo)
            items = [(k, c) for k, c in todo.items() if k in mine]
            assert self.progress is not None
            try:
                # A backend may ask for bigger calls (local engines batch hundreds of prompts at once).
                for part in chunks(items, backend.generation_chunk):
                    batch = [c for _, c in part]
                    responses = backend.generate(model, batch, self.spec.eval.generation)
                    if len(responses) != len(batch):
                        raise RuntimeError(f"backend {cell.backend} returned {len(responses)} responses for {len(batch)} prompts")
                    self.store.put_generations([
                        (k, json.dumps(_prompt_record(backend, c), ensure_ascii=False), r) for (k, c), r in zip(part, responses, strict=True)
                    ])
                    self.progress.advance("generate", len(part))
            except BackendError as e:
                return self._cell_failed(cell, "generate", e)
            finally:
                self.claims.release(mine)
            self.store.clear_failure(cell.key)
            return [self._judge_task(cell)] if cell.kind == "safety" else []

        return Task(f"generate {_label(cell)}", work, slots)

    def _judge_task(self, cell: Cell) -> Task:
        def work() -> list[Task]:
            items = self.store.cell_items(cell.key)
            responses = self.store.responses(g for g, _, _ in items)
            queries = {g: q for g, q, _ in items}
            todo: list[tuple[Judge, dict[str, JudgeItem]]] = []
            for judge in self.judges:  # every judge judges every response, each cached under its own name+version
                mine_todo: dict[str, JudgeItem] = {}
                for g, jk in judgment_keys(judge.name, judge.version, items, responses).items():
                    mine_todo.setdefault(jk, JudgeItem(queries[g], responses[g]))
                todo.append((judge, mine_todo))
            have = self.store.judgments(k for _, t in todo for k in t)
            mine = self.claims.claim(k for _, t in todo for k in t if k not in have)
            missing = [(judge, [(k, it) for k, it in t.items() if k in mine]) for judge, t in todo]
            assert self.progress is not None
            self.progress.add_total("judge", sum(len(m) for _, m in missing) - self._judge_planned.pop(cell.key, 0))
            try:
                for judge, judge_missing in missing:
                    for part in chunks(judge_missing, JUDGE_CHUNK):
                        verdicts = judge.judge([it for _, it in part])
                        self.store.put_judgments(judge.name, [
                            (k, Judged(v.unsafe, v.score, v.raw, v.error)) for (k, _), v in zip(part, verdicts, strict=True)
                        ])
                        self.progress.advance("judge", len(part))
            except BackendError as e:
                return self._cell_failed(cell, "judge", e)
            finally:
                self.claims.release(mine)
            self.store.clear_failure(cell.key)
            return []

        return Task(f"judge {_label(cell)}", work, ("judge",))

    def _cell_failed(self, cell: Cell, stage: str, e: BackendError) -> list[Task]:
        """A cell whose generation or judging failed after the backend's retries: recorded (the run ends with exit
        3 and a re-run tries it again), and the other cells go on."""
        log(f"  {stage} {_label(cell)} failed: {e} — recorded; continuing with the other cells")
        self.store.put_failure(cell.key, stage, _label(cell), str(e))
        return []


def _label(cell: Cell) -> str:
    return f"{cell.backend} {cell.train_template or 'base'} → {cell.test_template} {cell.dataset}"


def _prompt_record(backend: FineTuneBackend, conv) -> dict:
    """What the model saw, for audit exports: text or messages (token ids are re-derivable with `ptst render`)."""
    r = backend.render(conv)
    return {"text": r.text, "messages": list(r.messages) if r.messages is not None else None}

"""The work graph of a run: one task per fine-tuning job, per cell's generation and per cell's judging, each
unblocking the next as it finishes, with the slots (`ptst.scheduler`) that bound what runs at once.

This module builds the graph: it indexes every cell it can produce, counts the totals of the progress view, and
wires each task's follow-ups (a job's generations and checkpoints, a safety cell's judging). What a task does is in
`ptst.tasks`: each looks its work up in the store first and stores every response and verdict as it comes, so a task
re-run after a kill redoes only what was in flight. The runner (`ptst.runner`) builds the graph from a spec and hands
it to the scheduler.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ptst.backends.base import BackendSpec, FineTuneBackend
from ptst.collect import judgment_keys
from ptst.conversation import Conversation
from ptst.errors import API_FAILED, BackendError
from ptst.judge.base import Judge
from ptst.plan import (
    Cell,
    CellKeys,
    Datasets,
    JudgmentKeys,
    PlannedJob,
    base_model_key,
    cell_categories,
    checkpoint_model_key,
    eval_cells,
)
from ptst.progress import RunProgress, log
from ptst.scheduler import Task
from ptst.spec import Spec
from ptst.store import RunStore, bad_model_ref
from ptst.tasks import Work, label
from ptst.types import ModelRef

# Remote fine-tuning jobs waiting at once, per backend: all of them unless the spec says `max_concurrent_jobs` (for
# accounts with low limits), so the wall time of a grid is the longest job, not the sum.
DEFAULT_MAX_CONCURRENT_JOBS: int | None = None
REMOTE_GENERATION_CALLS = 4  # concurrent `generate` calls per remote backend (each may fan out further inside)
JUDGE_CALLS = 2  # concurrent `judge` calls (each may fan out further inside)


CellWork = tuple[Cell, list[Conversation], list[str]]  # a cell, its conversations, their generation keys


@dataclass
class ModelNode:
    """A model cells are generated from: known (base, or trained earlier) or the outcome of a job in this run."""

    key: str
    ref: ModelRef | None  # None until its job finishes
    job: PlannedJob | None
    cells: list[CellWork]
    checkpoint: int | None = None  # the training step of an intermediate checkpoint
    safety_mix: str | None = None  # the label of the safety mix it was fine-tuned with


class Graph:
    """The run's work as tasks: one per job, per cell's generation and per cell's judging."""

    def __init__(self, spec: Spec, store: RunStore, data: Datasets, judges: list[Judge], out: Path,
                 retry_failed: bool, usd: dict[str, float | None], cell_keys: CellKeys | None = None):
        self.spec, self.store, self.data, self.judges, self.out = spec, store, data, judges, out
        self.cell_keys = cell_keys or CellKeys(spec, data)
        self.work = Work(spec, store, judges, out, usd)  # the tasks' bodies, over the run's shared state
        self._have: set[str] = set()  # generation keys found in the store while planning
        self.retry_failed = retry_failed
        self.limits: dict[str, int] = {"judge": JUDGE_CALLS}
        self.totals = {"train": 0, "generate": 0, "judge": 0}
        self._positions = itertools.count(1)  # next() is atomic: train tasks index checkpoint cells concurrently

    @property
    def progress(self) -> RunProgress | None:
        """The run's progress view, set by the runner before the scheduler starts the tasks."""
        return self.work.progress

    @progress.setter
    def progress(self, view: RunProgress | None) -> None:
        self.work.progress = view

    @property
    def judgment_keys(self) -> JudgmentKeys:
        """Judgment keys computed while planning and judging, shared with the collection of results at the end."""
        return self.work.judgment_keys

    @judgment_keys.setter
    def judgment_keys(self, memo: JudgmentKeys) -> None:
        self.work.judgment_keys = memo

    # -- planning --------------------------------------------------------------------------------------------------
    def plan(self, backends: list[tuple[BackendSpec, FineTuneBackend]], planned: dict[str, list[PlannedJob]]) -> list[Task]:
        """Index every cell we can produce (one transaction) and return the tasks that start the run."""
        rows, tasks, ready = [], [], []
        for bspec, backend in backends:
            self._slots(bspec, backend)
            models: list[ModelNode] = []
            if self.spec.eval.evaluate_base or self.spec.train is None:
                models.append(ModelNode(base_model_key(bspec, backend), backend.base_model(), None, []))
            for pj in planned[bspec.name]:
                rec = self.store.job(pj.run_key)
                if rec is not None and rec.status == "succeeded" and rec.model_ref is not None:
                    try:
                        ref = ModelRef.model_validate(rec.model_ref)
                    except ValidationError as e:
                        raise bad_model_ref(self.store.directory / "ptst.db", pj.run_key,
                                            "not a model reference") from e
                    models.append(ModelNode(pj.run_key, ref, None, [], None, pj.safety_mix))
                    for step, ck in self._checkpoints(backend, ref, pj.run_key):
                        models.append(ModelNode(checkpoint_model_key(pj.run_key, step), ck, None, [], step,
                                                pj.safety_mix))
                elif rec is not None and rec.status in API_FAILED and not self.retry_failed:
                    job = pj.job
                    log(f"skip {job.backend} {job.train_template} seed {job.seed}: job {rec.status} earlier "
                        f"({rec.message}); use --retry-failed to try again")
                else:
                    # The model's identity is known before it exists, so its cells are indexed up front.
                    stub = ModelRef(backend=bspec.name, base_model=bspec.model, model_id="",
                                    train_template=pj.job.train_template, seed=pj.job.seed)
                    models.append(ModelNode(pj.run_key, None, pj, [], None, pj.safety_mix))
                    models[-1].cells = self._cells(bspec, backend, stub, pj.run_key, safety_mix=pj.safety_mix)
                    self.totals["train"] += 1
            for m in models:
                if m.ref is not None:
                    m.cells = self._cells(bspec, backend, m.ref, m.key, m.checkpoint, safety_mix=m.safety_mix)
                rows += [self._row(cell, convs, keys) for cell, convs, keys in m.cells]
                if m.ref is not None:
                    ready += [(backend, cell, m.ref, convs, keys) for cell, convs, keys in m.cells]
                else:
                    tasks.append(self._train_task(bspec, backend, m))
        self.store.replace_cells(rows)
        gen, judge = self._count(rows)
        self.totals["generate"] += gen
        self.totals["judge"] += judge
        # A cell whose responses (and verdicts) are all stored already has nothing to run: a finished re-run is cheap.
        failed = {f[0] for f in self.store.failures()}
        for backend, cell, ref, convs, keys in ready:
            if cell.key in failed or not self._have.issuperset(keys):
                tasks.append(self._generate_task(backend, cell, ref, convs, keys))
            elif cell.kind == "safety" and self.work.judge_planned.get(cell.key, 0) > 0:
                tasks.append(self._judge_task(cell))
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
               checkpoint: int | None = None, *, safety_mix: str | None = None) -> list[CellWork]:
        out = []
        for cell in eval_cells(self.spec, bspec, model, model_key, self.data, checkpoint=checkpoint,
                               safety_mix=safety_mix):
            convs, keys = self.cell_keys.get(cell, backend.family)
            out.append((cell, convs, keys))
        return out

    def _count(self, rows) -> tuple[int, int]:
        """Totals for the progress view: responses still missing, and safety items still without each judge's
        verdict."""
        keys = {it[0] for _, _, _, items in rows for it in items}
        safety = {it[0] for _, desc, _, items in rows if desc["kind"] == "safety" for it in items}
        have = self.store.responses(safety)  # judged by their text; the other items need only their presence
        found = set(have) | self.store.have_responses(keys - safety)
        self._have |= found
        total_judge = 0
        for key, desc, _, items in rows:
            if desc["kind"] != "safety":
                continue
            n = 0
            triples = [it[:3] for it in items]
            for judge in self.judges:
                jk = judgment_keys(judge.name, judge.version, triples, have, self.judgment_keys)
                n += len({g for g, _, _ in triples}) - len(self.store.judgments(jk.values()))
            self.work.judge_planned[key] = n
            total_judge += n
        return len(keys) - len(found), total_judge

    # -- tasks -----------------------------------------------------------------------------------------------------
    def _train_task(self, bspec: BackendSpec, backend: FineTuneBackend, m: ModelNode) -> Task:
        res = backend.resource()
        slots = (f"jobs:{bspec.name}",) + ((f"resource:{res}",) if res is not None else ())
        assert m.job is not None

        def work() -> list[Task]:
            ref = self.work.fine_tune(backend, m.job)  # type: ignore[arg-type]
            assert self.progress is not None
            self.progress.advance("train")
            if ref is None:
                self.store.drop_cells(c.key for c, _, _ in m.cells)
                self.progress.skip("generate", sum(len(set(k)) for _, _, k in m.cells))
                self.progress.skip("judge", sum(self.work.judge_planned.pop(c.key, 0) for c, _, _ in m.cells))
                return []
            tasks = [self._generate_task(backend, cell, ref, convs, keys) for cell, convs, keys in m.cells]
            return tasks + self._checkpoint_tasks(bspec, backend, ref, m.job.run_key,  # type: ignore[union-attr]
                                                  m.safety_mix)

        return Task(f"train {bspec.name} {m.job.job.train_template} seed {m.job.job.seed}", work, slots)

    def _checkpoint_tasks(self, bspec: BackendSpec, backend: FineTuneBackend, ref: ModelRef, run_key: str,
                          safety_mix: str | None = None) -> list[Task]:
        """After a job: index the cells of the checkpoints the spec asks for, and return their generation tasks."""
        tasks: list[Task] = []
        for step, ck in self._checkpoints(backend, ref, run_key):
            cells = self._cells(bspec, backend, ck, checkpoint_model_key(run_key, step), step, safety_mix=safety_mix)
            rows = [self._row(cell, convs, keys) for cell, convs, keys in cells]
            for key, desc, position, items in rows:
                self.store.put_cell(key, desc, position, items)
            gen, judge = self._count(rows)
            assert self.progress is not None
            self.progress.add_total("generate", gen)
            self.progress.add_total("judge", judge)
            tasks += [self._generate_task(backend, cell, ck, convs, keys) for cell, convs, keys in cells]
        return tasks

    def _generate_task(self, backend: FineTuneBackend, cell: Cell, model: ModelRef, convs: list[Conversation],
                       keys: list[str]) -> Task:
        res = backend.resource()
        slots = (f"resource:{res}",) if res is not None else (f"generate:{cell.backend}",)

        def work() -> list[Task]:
            done = self.work.generate(backend, cell, model, convs, keys)
            return [self._judge_task(cell)] if done and cell.kind == "safety" else []

        return Task(f"generate {label(cell)}", work, slots)

    def _judge_task(self, cell: Cell) -> Task:
        def work() -> list[Task]:
            self.work.judge(cell)
            return []

        return Task(f"judge {label(cell)}", work, ("judge",))

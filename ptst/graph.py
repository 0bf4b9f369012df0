"""The work graph of a run: one task per fine-tuning job, per cell's generation and per cell's judging, each
unblocking the next as it finishes, with the slots (`ptst.scheduler`) that bound what runs at once.

Every task looks its work up in the store first and stores each response and verdict as the backend or judge hands
it over (`generate_streaming`, `judge_streaming`), so a task re-run after a kill redoes only what was in flight. The runner (`ptst.runner`) builds the graph from a spec and hands it to the scheduler.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ptst.backends.base import BackendSpec, FineTuneBackend
from ptst.collect import (
    judgment_keys,
)
from ptst.conversation import Conversation
from ptst.errors import API_FAILED, BackendError, JobFailed
from ptst.judge.base import Judge, JudgeItem, Judgment
from ptst.plan import (
    Cell,
    CellKeys,
    Datasets,
    JudgmentKeys,
    PlannedJob,
    base_model_key,
    cell_categories,
    checkpoint_model_key,
    chunks,
    eval_cells,
)
from ptst.progress import RunProgress, log
from ptst.scheduler import Claims, Task
from ptst.spec import Spec
from ptst.store import JobRecord, Judged, RunStore, bad_model_ref
from ptst.types import ModelRef

JUDGE_CHUNK = 64
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
        self.judgment_keys = JudgmentKeys()  # shared with the collection of results at the end of the run
        self._have: set[str] = set()  # generation keys found in the store while planning
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
            elif cell.kind == "safety" and self._judge_planned.get(cell.key, 0) > 0:
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
            self._judge_planned[key] = n
            total_judge += n
        return len(keys) - len(found), total_judge

    # -- tasks -----------------------------------------------------------------------------------------------------
    def _train_task(self, bspec: BackendSpec, backend: FineTuneBackend, m: ModelNode) -> Task:
        res = backend.resource()
        slots = (f"jobs:{bspec.name}",) + ((f"resource:{res}",) if res is not None else ())
        assert m.job is not None

        def work() -> list[Task]:
            ref = self._fine_tune(backend, m.job)  # type: ignore[arg-type]
            assert self.progress is not None
            self.progress.advance("train")
            if ref is None:
                self.store.drop_cells(c.key for c, _, _ in m.cells)
                self.progress.skip("generate", sum(len(set(k)) for _, _, k in m.cells))
                self.progress.skip("judge", sum(self._judge_planned.pop(c.key, 0) for c, _, _ in m.cells))
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
            tally = [0]  # responses stored so far by this task (the rest is skipped in the progress view on failure)
            try:
                # A backend may ask for bigger calls (local engines batch hundreds of prompts at once).
                for part in chunks(items, backend.generation_chunk):
                    self._generate_part(backend, cell, model, part, tally)
            except BackendError as e:
                self.progress.skip("generate", len(items) - tally[0])
                self.progress.skip("judge", self._judge_planned.pop(cell.key, 0))  # its judging will not run
                return self._cell_failed(cell, "generate", e)
            finally:
                self.claims.release(mine)
            self.store.clear_failure(cell.key)
            return [self._judge_task(cell)] if cell.kind == "safety" else []

        return Task(f"generate {_label(cell)}", work, slots)

    def _generate_part(self, backend: FineTuneBackend, cell: Cell, model: ModelRef,
                       part: Sequence[tuple[str, Conversation]], tally: list[int]) -> None:
        """One `generate_streaming` call; every response is stored the moment the backend hands it over."""
        assert self.progress is not None
        progress = self.progress
        seen: set[int] = set()

        def store(done: Sequence[tuple[int, str]]) -> None:
            rows = []
            for i, r in done:
                k, c = part[i]
                seen.add(i)
                rows.append((k, json.dumps(_prompt_record(backend, c), ensure_ascii=False), r))
            self.store.put_generations(rows)
            progress.advance("generate", len(rows))
            tally[0] += len(rows)

        backend.generate_streaming(model, [c for _, c in part], self.spec.eval.generation, store)
        if len(seen) != len(part):
            raise RuntimeError(f"backend {cell.backend} handed over {len(seen)} responses for {len(part)} prompts")

    def _judge_task(self, cell: Cell) -> Task:
        def work() -> list[Task]:
            items = self.store.cell_items(cell.key)
            responses = self.store.responses(g for g, _, _ in items)
            queries = {g: q for g, q, _ in items}
            todo: list[tuple[Judge, dict[str, JudgeItem]]] = []
            for judge in self.judges:  # every judge judges every response, each cached under its own name+version
                mine_todo: dict[str, JudgeItem] = {}
                for g, jk in judgment_keys(judge.name, judge.version, items, responses, self.judgment_keys).items():
                    mine_todo.setdefault(jk, JudgeItem(queries[g], responses[g]))
                todo.append((judge, mine_todo))
            have = self.store.judgments(k for _, t in todo for k in t)
            mine = self.claims.claim(k for _, t in todo for k in t if k not in have)
            missing = [(judge, [(k, it) for k, it in t.items() if k in mine]) for judge, t in todo]
            assert self.progress is not None
            # The total was fixed at planning (responses to give a verdict); verdicts found in the cache or being
            # given by another cell count as done here, so the total never shrinks as the run goes.
            planned, tally = self._judge_planned.pop(cell.key, 0), [0]
            try:
                for judge, judge_missing in missing:
                    for part in chunks(judge_missing, JUDGE_CHUNK):
                        self._judge_part(judge, part, tally, planned)
            except BackendError as e:
                self.progress.skip("judge", max(planned - tally[0], 0))
                return self._cell_failed(cell, "judge", e)
            finally:
                self.claims.release(mine)
            self.store.clear_failure(cell.key)
            self.progress.advance("judge", max(planned - tally[0], 0))
            return []

        return Task(f"judge {_label(cell)}", work, ("judge",))

    def _judge_part(self, judge: Judge, part: Sequence[tuple[str, JudgeItem]], tally: list[int], planned: int) -> None:
        """One `judge_streaming` call; every verdict is stored the moment the judge hands it over. The progress view
        counts at most the `planned` verdicts (its total was fixed at planning), `tally` holding the cell's count."""
        assert self.progress is not None
        progress = self.progress

        def store(done: Sequence[tuple[int, Judgment]]) -> None:
            rows = [(part[i][0], Judged(v.unsafe, v.score, v.raw, v.error)) for i, v in done]
            self.store.put_judgments(judge.name, rows)
            progress.advance("judge", min(len(rows), max(planned - tally[0], 0)))
            tally[0] += len(rows)

        judge.judge_streaming([it for _, it in part], store)

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

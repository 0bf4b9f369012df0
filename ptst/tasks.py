"""The bodies of the work graph's tasks (`ptst.graph` builds the graph): fine-tune a job, generate a cell's
responses, judge a cell's responses. Each looks its work up in the store first and stores each response and verdict as
the backend or judge hands it over (`generate_streaming`, `judge_streaming`), so a task re-run after a kill redoes
only what was in flight; a failure is recorded for its job or cell and the others go on.

They share the run's state (`Work`): the store, the claims that keep two cells from generating or judging the same
key at once, the progress view, and the verdicts still planned per cell (the progress view's fixed total).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptst.backends.base import FineTuneBackend
from ptst.collect import judgment_keys
from ptst.conversation import Conversation
from ptst.errors import BackendError, JobFailed
from ptst.judge.base import Judge, JudgeItem, Judgment
from ptst.plan import Cell, JudgmentKeys, PlannedJob, chunks
from ptst.progress import RunProgress, log
from ptst.scheduler import Claims
from ptst.spec import Spec
from ptst.store import JobRecord, Judged, RunStore
from ptst.types import ModelRef

JUDGE_CHUNK = 64


class Work:
    """What the tasks do, over the run's shared state; `progress` is set by the runner before any task runs."""

    def __init__(self, spec: Spec, store: RunStore, judges: list[Judge], out: Path, usd: dict[str, float | None]):
        self.spec, self.store, self.judges, self.out, self.usd = spec, store, judges, out, usd
        self.judgment_keys = JudgmentKeys()  # shared with the collection of results at the end of the run
        self.judge_planned: dict[str, int] = {}  # cell -> verdicts counted in the judge total, not yet given
        self.claims = Claims()
        self.progress: RunProgress | None = None

    def fine_tune(self, backend: FineTuneBackend, pj: PlannedJob) -> ModelRef | None:
        """The job's model, recorded in the store; None when the job failed (recorded, the other cells go on)."""
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

    def generate(self, backend: FineTuneBackend, cell: Cell, model: ModelRef, convs: list[Conversation],
                 keys: list[str]) -> bool:
        """The cell's missing responses, stored as they come; False when it failed (recorded, nothing more to do)."""
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
            self.progress.skip("judge", self.judge_planned.pop(cell.key, 0))  # its judging will not run
            self.cell_failed(cell, "generate", e)
            return False
        finally:
            self.claims.release(mine)
        self.store.clear_failure(cell.key)
        return True

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

    def judge(self, cell: Cell) -> None:
        """Every judge's missing verdicts on the cell's responses, stored as they come (a failure is recorded)."""
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
        planned, tally = self.judge_planned.pop(cell.key, 0), [0]
        try:
            for judge, judge_missing in missing:
                for part in chunks(judge_missing, JUDGE_CHUNK):
                    self._judge_part(judge, part, tally, planned)
        except BackendError as e:
            self.progress.skip("judge", max(planned - tally[0], 0))
            self.cell_failed(cell, "judge", e)
            return
        finally:
            self.claims.release(mine)
        self.store.clear_failure(cell.key)
        self.progress.advance("judge", max(planned - tally[0], 0))

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

    def cell_failed(self, cell: Cell, stage: str, e: BackendError) -> None:
        """A cell whose generation or judging failed after the backend's retries: recorded (the run ends with exit
        3 and a re-run tries it again), and the other cells go on."""
        log(f"  {stage} {label(cell)} failed: {e} — recorded; continuing with the other cells")
        self.store.put_failure(cell.key, stage, label(cell), str(e))


def label(cell: Cell) -> str:
    """A cell as logs and task names show it."""
    return f"{cell.backend} {cell.train_template or 'base'} → {cell.test_template} {cell.dataset}"


def _prompt_record(backend: FineTuneBackend, conv) -> dict:
    """What the model saw, for audit exports: text or messages (token ids are re-derivable with `ptst render`)."""
    r = backend.render(conv)
    return {"text": r.text, "messages": list(r.messages) if r.messages is not None else None}

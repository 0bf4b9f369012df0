"""Expand a spec into the steps of a run: fine-tuning jobs and evaluation cells, each keyed by a content hash.

The plan is a pure function of the spec and the loaded data, so the same command always yields the same keys, and a
re-run finds its finished steps in the store.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ptst.backends.base import BackendSpec, FineTuneBackend
from ptst.conversation import Conversation
from ptst.data import Example, data_hash
from ptst.keys import (
    base_model_key_v1,
    cell_key_v1,
    content_hash,
    generation_key_v1,
    judgment_key_v1,
    run_key_v1,
)
from ptst.spec import Spec
from ptst.types import ModelRef, TrainJob


@dataclass(frozen=True)
class Datasets:
    """Everything a run reads, loaded once: training examples and each benchmark/task's items."""

    train: tuple[Example, ...]
    safety: dict[str, tuple[Example, ...]]
    tasks: dict[str, tuple[tuple[Example, ...], str]]  # name -> (items, metric)
    # (mix label, training examples) per safety mix of the spec (label None: no mix); empty: `train` alone, unlabelled.
    train_mixes: tuple[tuple[str | None, tuple[Example, ...]], ...] = ()

    def mixes(self) -> tuple[tuple[str | None, tuple[Example, ...]], ...]:
        return self.train_mixes or ((None, self.train),)


@dataclass(frozen=True)
class PlannedJob:
    job: TrainJob
    run_key: str  # job key + the backend's identity: the store's key for this job
    safety_mix: str | None = None  # the label of the safety mix in its data; None: no mix


@dataclass(frozen=True)
class Cell:
    """One model × test template × benchmark (or task): a number in the report."""

    backend: str
    base_model: str
    model_key: str
    train_template: str | None
    seed: int | None
    test_template: str
    kind: Literal["safety", "task"]
    dataset: str
    metric: str | None
    checkpoint: int | None = None  # training step of an intermediate checkpoint; None: the final (or base) model
    safety_mix: str | None = None  # the safety mix of the model's training data (label); None: none, or the base model

    @property
    def key(self) -> str:
        """A final model's cell keeps its v1 key (existing stores stay valid); a checkpoint's adds its step. The safety
        mix is not hashed: it is already in the model key (the mix's examples are in the job's data hash), so cells
        of different mixes never collide and a single-mix spec keeps its keys."""
        d = self.describe()
        d.pop("safety_mix")
        step = d.pop("checkpoint")
        key = cell_key_v1(**d)
        return key if step is None else content_hash({"cell": key, "checkpoint": step})

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "base_model": self.base_model, "model_key": self.model_key,
            "train_template": self.train_template, "seed": self.seed, "test_template": self.test_template,
            "kind": self.kind, "dataset": self.dataset, "metric": self.metric, "checkpoint": self.checkpoint,
            "safety_mix": self.safety_mix,
        }


def backend_identity(spec: BackendSpec, backend: FineTuneBackend) -> dict[str, Any]:
    """What about a backend changes its outputs (beyond the job itself): its kind, model and result-relevant options."""
    return {"kind": spec.kind, "model": spec.model, **backend.identity()}


def base_model_key(spec: BackendSpec, backend: FineTuneBackend) -> str:
    return base_model_key_v1(backend_identity(spec, backend))


def plan_digest(spec: Spec, data: Datasets, backends: Sequence[tuple[BackendSpec, FineTuneBackend]],
                judges: Sequence[tuple[str, str]]) -> str:
    """One hash of everything a run's results are derived from besides its store: the spec, each dataset's content
    (categories included), each backend's identity, the judges, and the code that turns stored rows into numbers.
    A finished run keeps its results under this digest (`RunStore.record_finished`), so the same command again on
    an unchanged store costs the data load and this hash, not one key per response."""
    def rows(examples: Sequence[Example]) -> str:
        return content_hash([[e.prompt, e.answer, _category(e)] for e in examples])

    return content_hash({
        "code": code_digest(), "spec": spec.model_dump(mode="json"),
        "backends": [backend_identity(b, be) for b, be in backends], "judges": [list(j) for j in judges],
        "train": [[label, rows(ex)] for label, ex in data.mixes()] if spec.train is not None else [],
        "safety": {name: rows(ex) for name, ex in data.safety.items()},
        "tasks": {name: [rows(ex), metric] for name, (ex, metric) in data.tasks.items()},
    })


@functools.cache
def code_digest() -> str:
    """A hash of ptst's own source: results derived by another version of the analysis are never reused (the
    package version alone does not move during development)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def checkpoint_model_key(run_key: str, step: int) -> str:
    """The model key of a job's checkpoint at `step`: its generations are cached apart from the final model's."""
    return content_hash({"run": run_key, "checkpoint": step})


def train_jobs(spec: Spec, bspec: BackendSpec, backend: FineTuneBackend, data: Datasets) -> list[PlannedJob]:
    if spec.train is None:
        return []
    jobs = []
    for mix, train in data.mixes():  # each safety mix is its own set of jobs (its examples change the data hash)
        train_hash = data_hash(list(train))  # one pass over the data, not one per template and seed
        for name in spec.train.templates:
            tpl = spec.template(name)
            examples = tuple(tpl.apply(ex.prompt, backend.family, answer=ex.answer) for ex in train)
            for seed in spec.train.seeds:
                job = TrainJob(
                    backend=bspec.name, base_model=bspec.model, train_template=name, seed=seed,
                    hyperparameters=bspec.train_hyperparameters(spec.train.hyperparameters), examples=examples,
                    data_hash=train_hash,
                )
                jobs.append(PlannedJob(job, run_key_v1(job.key, backend_identity(bspec, backend)), mix))
    return jobs


def eval_cells(
    spec: Spec, bspec: BackendSpec, model: ModelRef, model_key: str, data: Datasets, *, checkpoint: int | None = None,
    safety_mix: str | None = None,
) -> list[Cell]:
    cells = []
    for test in spec.eval.templates:
        def cell(kind: Literal["safety", "task"], dataset: str, metric: str | None, test: str = test) -> Cell:
            return Cell(
                backend=bspec.name, base_model=bspec.model, model_key=model_key, train_template=model.train_template,
                seed=model.seed, test_template=test, checkpoint=checkpoint, safety_mix=safety_mix, kind=kind,
                dataset=dataset, metric=metric,
            )

        cells += [cell("safety", name, None) for name in data.safety]
        cells += [cell("task", name, metric) for name, (_, metric) in data.tasks.items()]
    return cells


def cell_conversations(spec: Spec, cell: Cell, family: str, data: Datasets) -> list[Conversation]:
    tpl = spec.template(cell.test_template)
    if cell.kind == "safety":
        return [tpl.apply(ex.prompt, family) for ex in data.safety[cell.dataset]]
    items, _ = data.tasks[cell.dataset]
    return [tpl.apply(ex.prompt, family, reference=ex.answer) for ex in items]


def cell_categories(cell: Cell, data: Datasets) -> list[str | None]:
    """Each item's category (DirectHarm4's `category` column) where the benchmark has one, for per-category rows."""
    if cell.kind != "safety":
        return [None] * len(data.tasks[cell.dataset][0])
    return [_category(ex) for ex in data.safety[cell.dataset]]


def _category(ex: Example) -> str | None:
    cat = ex.meta.get("category")
    return None if cat is None or str(cat).strip() == "" else str(cat)


def generation_key(model_key: str, conv: Conversation, cfg: Any) -> str:
    return generation_key_v1(
        model_key=model_key, mode=conv.mode, system=conv.system, user=conv.user, reference=conv.reference, cfg=cfg,
        examples=conv.examples,
    )


def judgment_key(judge_name: str, judge_version: str, query: str, response: str) -> str:
    return judgment_key_v1(judge=judge_name, version=judge_version, query=query, response=response)


class CellKeys:
    """Each cell's conversations and generation keys, computed once per run: the budget estimate and the graph both
    need them (one hash per response), and a finished re-run spends its time on little else."""

    def __init__(self, spec: Spec, data: Datasets):
        self.spec, self.data = spec, data
        self._memo: dict[tuple[str, str, str, str, str], tuple[list[Conversation], list[str]]] = {}

    def get(self, cell: Cell, family: str) -> tuple[list[Conversation], list[str]]:
        """(conversations, generation keys) of a cell; they depend on its model, test template, dataset and family
        only, so the estimate's stub cells and the graph's cells share them."""
        memo_key = (cell.model_key, cell.test_template, cell.kind, cell.dataset, family)
        found = self._memo.get(memo_key)
        if found is None:
            convs = cell_conversations(self.spec, cell, family, self.data)
            cfg = self.spec.eval.generation
            found = (convs, [generation_key(cell.model_key, c, cfg) for c in convs])
            self._memo[memo_key] = found
        return found


class JudgmentKeys:
    """Judgment keys computed once per run: the graph's planning needs them to count what is left to judge, the
    collection of results to find the verdicts, and a finished 100,000-response re-run spent seconds hashing twice."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str, str, str], str] = {}

    def get(self, judge_name: str, judge_version: str, query: str, response: str) -> str:
        k = (judge_name, judge_version, query, response)
        found = self._memo.get(k)
        if found is None:
            found = self._memo[k] = judgment_key(judge_name, judge_version, query, response)
        return found


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]

"""Execute a spec: fine-tune, generate, judge — recording each result in the run store before moving on.

The runner owns ordering and persistence; backends own vendor work. Every step is looked up by its key first, so
re-running a finished command does nothing, and a killed run resumes with nothing lost and nothing paid twice.
Results are always rebuilt from the store (`collect_results`), never from in-memory state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ptst.analysis import build_results
from ptst.backends.base import FineTuneBackend, create_backend
from ptst.types import ModelRef
from ptst.data import DatasetRef, load, sample
from ptst.errors import BudgetExceeded, JobFailed
from ptst.judge.base import Judge, JudgeItem, create_judge
from ptst.plan import (
    Cell,
    Datasets,
    PlannedJob,
    base_model_key,
    cell_conversations,
    chunks,
    eval_cells,
    generation_key,
    judgment_key,
    train_jobs,
)
from ptst.progress import log, progress_bar
from ptst.records import ItemRecord, RunInfo, Verdict
from ptst.results import FailedJob, Results
from ptst.spec import Spec
from ptst.store import JobRecord, Judged, RunStore


JUDGE_CHUNK = 64


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


def load_datasets(spec: Spec, spec_dir: Path | None = None) -> Datasets:
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


def run(spec: Spec, out: Path, *, spec_dir: Path | None = None, yes: bool = False, retry_failed: bool = False) -> Results:
    data = load_datasets(spec, spec_dir)
    backends = [(b, create_backend(b)) for b in spec.backends]
    judge = create_judge(spec.judge)
    simulated = any(b.simulated for _, b in backends) or judge.simulated
    if simulated:
        from ptst.report import SIMULATED_BANNER

        log(SIMULATED_BANNER)
    with RunStore.open(out) as store:
        store.set_meta("spec", spec.model_dump(mode="json"))
        store.set_meta("spec_name", spec.name)
        store.set_meta("simulated", simulated)
        store.set_meta("train_templates", list(spec.train.templates) if spec.train else [])
        store.set_meta("test_templates", list(spec.eval.templates))
        names = set(spec.eval.templates) | set(spec.train.templates if spec.train else [])
        store.set_meta("safety_templates", sorted(n for n in names if spec.template(n).safety))
        store.conn.execute("DELETE FROM cells")  # the index of this spec's cells; cached results stay

        planned = {bspec.name: train_jobs(spec, bspec, backend, data) for bspec, backend in backends}
        _check_budget(spec, store, backends, planned, yes)

        position = 0
        for bspec, backend in backends:
            models: list[tuple[ModelRef, str]] = []
            if spec.eval.evaluate_base or spec.train is None:
                models.append((backend.base_model(), base_model_key(bspec, backend)))
            for pj in planned[bspec.name]:
                ref = _fine_tune(store, backend, pj, out, retry_failed)
                if ref is not None:
                    models.append((ref, pj.run_key))
            for model, model_key in models:
                cells = eval_cells(spec, bspec, model, model_key, data)
                for cell in cells:
                    position += 1
                    _generate_cell(spec, store, backend, cell, model, data, position)
        _judge_all(store, judge)
        return collect_results(store)


def _check_budget(spec: Spec, store: RunStore, backends, planned: dict[str, list[PlannedJob]], yes: bool) -> None:
    total = 0.0
    unpriced: list[str] = []
    for bspec, backend in backends:
        for pj in planned[bspec.name]:
            if store.job(pj.run_key) is None:
                est = backend.estimate(pj.job)
                if est.usd is None:
                    unpriced.append(f"{bspec.name}/{bspec.model}")
                total += est.usd or 0.0
    if spec.budget_usd is not None and unpriced and not yes:
        raise BudgetExceeded(
            f"no price known for {unpriced[0]}, so budget_usd cannot be checked; add the model to the backend's "
            "`prices` option or pass --yes"
        )
    if spec.budget_usd is not None and total > spec.budget_usd and not yes:
        raise BudgetExceeded(
            f"estimated fine-tuning cost ${total:,.2f} exceeds budget_usd ${spec.budget_usd:,.2f}; "
            "raise budget_usd in the spec or pass --yes (see `ptst estimate SPEC`)"
        )


def _fine_tune(store: RunStore, backend: FineTuneBackend, pj: PlannedJob, out: Path, retry_failed: bool) -> ModelRef | None:
    job = pj.job
    rec = store.job(pj.run_key)
    if rec is not None and rec.status == "succeeded" and rec.model_ref is not None:
        return ModelRef.model_validate(rec.model_ref)
    if rec is not None and not retry_failed:
        log(f"skip {job.backend} {job.train_template} seed {job.seed}: job {rec.status} earlier ({rec.message}); "
            "use --retry-failed to try again")
        return None
    log(f"fine-tune {job.backend} {job.base_model} on {job.train_template} (seed {job.seed}, {len(job.examples)} examples)")
    workdir = out / "models" / pj.run_key
    workdir.mkdir(parents=True, exist_ok=True)
    base = dict(key=pj.run_key, backend=job.backend, base_model=job.base_model, train_template=job.train_template, seed=job.seed)
    try:
        ref = backend.fine_tune(job, store, workdir)
    except JobFailed as e:
        log(f"  {e} — recorded; continuing with the other cells")
        store.put_job(JobRecord(**base, status=e.status, model_ref=None, code=e.code, message=str(e)))
        return None
    store.put_job(JobRecord(**base, status="succeeded", model_ref=ref.model_dump(mode="json"), code=None, message=None))
    return ref


def _generate_cell(
    spec: Spec, store: RunStore, backend: FineTuneBackend, cell: Cell, model: ModelRef, data: Datasets, position: int
) -> None:
    cfg = spec.eval.generation
    convs = cell_conversations(spec, cell, backend.family, data)
    keys = [generation_key(cell.model_key, c, cfg) for c in convs]
    store.put_cell(cell.key, cell.describe(), position, [(k, c.query, c.reference) for k, c in zip(keys, convs)])
    have = store.responses(keys)
    todo: dict[str, object] = {}
    for k, c in zip(keys, convs):
        if k not in have and k not in todo:
            todo[k] = c
    if not todo:
        return
    label = f"generate {cell.backend} {cell.train_template or 'base'} → {cell.test_template} {cell.dataset}"
    items = list(todo.items())
    with progress_bar(label, len(items)) as advance:
        # A backend may ask for bigger calls (local engines batch hundreds of prompts at once).
        for part in chunks(items, backend.generation_chunk):
            batch = [c for _, c in part]
            responses = backend.generate(model, batch, cfg)  # type: ignore[arg-type]
            if len(responses) != len(batch):
                raise RuntimeError(f"backend {cell.backend} returned {len(responses)} responses for {len(batch)} prompts")
            rows = [
                (k, json.dumps(_prompt_record(backend, c), ensure_ascii=False), r)
                for (k, c), r in zip(part, responses)
            ]
            store.put_generations(rows)
            advance(len(part))


def _prompt_record(backend: FineTuneBackend, conv) -> dict:
    """What the model saw, for audit exports: text or messages (token ids are re-derivable with `ptst render`)."""
    r = backend.render(conv)
    return {"text": r.text, "messages": list(r.messages) if r.messages is not None else None}


def _judgment_keys(
    judge_name: str, judge_version: str, items: Sequence[tuple[str, str, str | None]], responses: dict[str, str]
) -> dict[str, str]:
    """gen_key -> judgment key, for the items of a cell that have a response."""
    return {g: judgment_key(judge_name, judge_version, q, responses[g]) for g, q, _ in items if g in responses}


def _judge_all(store: RunStore, judge: Judge) -> None:
    store.set_meta("judge", {"name": judge.name, "version": judge.version})  # the judge the results are read with
    todo: dict[str, JudgeItem] = {}
    for key, desc in store.cells():
        if desc["kind"] != "safety":
            continue
        items = store.cell_items(key)
        responses = store.responses(g for g, _, _ in items)
        queries = {g: q for g, q, _ in items}
        for g, jk in _judgment_keys(judge.name, judge.version, items, responses).items():
            todo.setdefault(jk, JudgeItem(queries[g], responses[g]))
    have = store.judgments(todo)
    missing = [(k, it) for k, it in todo.items() if k not in have]
    if not missing:
        return
    with progress_bar(f"judge ({judge.name})", len(missing)) as advance:
        for part in chunks(missing, JUDGE_CHUNK):
            verdicts = judge.judge([it for _, it in part])
            store.put_judgments(
                judge.name, [(k, Judged(v.unsafe, v.score, v.raw, v.error)) for (k, _), v in zip(part, verdicts)]
            )
            advance(len(part))


def item_records(store: RunStore) -> list[ItemRecord]:
    """Every planned item of the spec's cells, with its response and the current judge's verdict where present."""
    judge_meta = store.get_meta("judge") or {}
    judge_name = judge_meta.get("name")
    simulated = bool(store.get_meta("simulated"))
    records: list[ItemRecord] = []
    for key, d in store.cells():
        items = store.cell_items(key)
        responses = store.responses(g for g, _, _ in items)
        jk: dict[str, str] = {}
        verdicts: dict[str, Judged] = {}
        if d["kind"] == "safety":
            jk = _judgment_keys(judge_name or "", judge_meta.get("version", ""), items, responses)
            verdicts = store.judgments(jk.values())
        for idx, (g, q, ref) in enumerate(items):
            v = verdicts.get(jk.get(g, ""))
            records.append(ItemRecord(
                backend=d["backend"], base_model=d["base_model"], train_template=d["train_template"], seed=d["seed"],
                checkpoint=d.get("checkpoint"), test_template=d["test_template"], kind=d["kind"],
                dataset=d["dataset"], metric=d["metric"], index=idx, query=q, reference=ref,
                response=responses.get(g), simulated=simulated,
                verdicts=(Verdict(judge_name or "", v.unsafe, v.score, v.raw),) if v is not None else (),
            ))
    return records


def collect_results(store: RunStore) -> Results:
    """Rebuild every number from the store alone: the report of a run is a pure function of its `ptst.db`."""
    judge_meta = store.get_meta("judge") or {}
    spec = store.get_meta("spec") or {}
    failed = [
        FailedJob(backend=j.backend, base_model=j.base_model, train_template=j.train_template, seed=j.seed,
                  status=j.status, code=j.code, message=j.message or "")
        for j in store.jobs() if j.status != "succeeded"
    ]
    info = RunInfo(
        spec_name=store.get_meta("spec_name") or spec.get("name", ""), simulated=bool(store.get_meta("simulated")),
        judge=judge_meta.get("name"),
        train_templates=tuple(store.get_meta("train_templates") or []),
        test_templates=tuple(store.get_meta("test_templates") or []),
        safety_templates=tuple(store.get_meta("safety_templates") or []),
    )
    return build_results(item_records(store), failed, info)


def export_rows(store: RunStore) -> list[dict]:
    """Every rendered prompt, raw response and verdict, one row per item, so any number can be audited."""
    judge_meta = store.get_meta("judge") or {}
    rows = []
    for key, d in store.cells():
        items = store.cell_items(key)
        keys = [g for g, _, _ in items]
        responses, prompts = store.responses(keys), store.prompts(keys)
        jk = _judgment_keys(judge_meta.get("name", ""), judge_meta.get("version", ""), items, responses)
        verdicts = store.judgments(jk.values()) if d["kind"] == "safety" else {}
        for idx, (g, q, ref) in enumerate(items):
            v = verdicts.get(jk.get(g, ""))
            rows.append({
                **{k: d[k] for k in ("backend", "base_model", "train_template", "seed", "test_template", "kind", "dataset")},
                "index": idx, "query": q, "reference": ref,
                "prompt": json.loads(prompts[g]) if g in prompts else None, "response": responses.get(g),
                "unsafe": v.unsafe if v else None, "score": v.score if v else None,
                "judge_reply": v.raw if v else None,
            })
    return rows



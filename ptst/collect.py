"""The results of a run, rebuilt from its store alone: item records, run facts (status, times, money), exports.

A report is a pure function of `ptst.db`, so `ptst report DIR` on a finished, failed or killed run says exactly what
is there; the run's status is read from the store the same way (nothing in memory decides it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ptst.analysis import build_results
from ptst.plan import JudgmentKeys, judgment_key
from ptst.records import ItemRecord, RunInfo, Verdict
from ptst.results import FailedJob, JobRow, Results
from ptst.store import Judged, RunStore


def judgment_keys(
    judge_name: str, judge_version: str, items: Sequence[tuple[str, str, str | None]], responses: dict[str, str],
    memo: JudgmentKeys | None = None,
) -> dict[str, str]:
    """gen_key -> judgment key, for the items of a cell that have a response (the runner judges by it too); `memo`
    shares them within a run."""
    if memo is not None:
        return {g: memo.get(judge_name, judge_version, q, responses[g]) for g, q, _ in items if g in responses}
    return {g: judgment_key(judge_name, judge_version, q, responses[g]) for g, q, _ in items if g in responses}


def run_judges(store: RunStore) -> list[tuple[str, str]]:
    """(name, version) of every judge of the run, the primary first: the "judges" meta, or the one "judge" meta of a
    store written before several judges existed."""
    many = store.get_meta("judges")
    if many:
        return [(j["name"], j["version"]) for j in many]
    one = store.get_meta("judge") or {}
    return [(one.get("name") or "", one.get("version", ""))]


def _verdicts(
    store: RunStore, judges: Sequence[tuple[str, str]], items: Sequence[tuple[str, str, str | None]],
    responses: dict[str, str], memo: JudgmentKeys | None = None,
) -> dict[str, list[Verdict]]:
    """gen_key -> one Verdict per judge that has judged its response, in the judges' order (one store lookup per
    judge for all the items given)."""
    out: dict[str, list[Verdict]] = {}
    for name, version in judges:
        jk = judgment_keys(name, version, items, responses, memo)
        got: dict[str, Judged] = store.judgments(jk.values())
        for g, k in jk.items():
            v = got.get(k)
            if v is not None:
                out.setdefault(g, []).append(Verdict(name, v.unsafe, v.score, v.raw))
    return out


def item_records(store: RunStore, memo: JudgmentKeys | None = None) -> list[ItemRecord]:
    """Every planned item of the spec's cells, with its response, its category, and each judge's verdict where
    present (`memo`: the run's judgment keys, when called at the end of a run). Responses and verdicts are read
    once for all cells (a 100,000-response run reads them in one pass each)."""
    judges = run_judges(store)
    simulated = bool(store.get_meta("simulated"))
    cells = [(key, d, store.cell_items(key), store.cell_categories(key)) for key, d in store.cells()]
    responses = store.responses(g for _, _, items, _ in cells for g, _, _ in items)
    safety_items = [it for _, d, items, _ in cells if d["kind"] == "safety" for it in items]
    verdicts = _verdicts(store, judges, safety_items, responses, memo) if safety_items else {}
    records: list[ItemRecord] = []
    for _, d, items, categories in cells:
        safety = d["kind"] == "safety"
        for idx, ((g, q, ref), cat) in enumerate(zip(items, categories, strict=True)):
            records.append(ItemRecord(
                backend=d["backend"], base_model=d["base_model"], train_template=d["train_template"], seed=d["seed"],
                checkpoint=d.get("checkpoint"), test_template=d["test_template"], kind=d["kind"],
                dataset=d["dataset"], metric=d["metric"], index=idx, query=q, reference=ref, category=cat,
                response=responses.get(g), simulated=simulated, verdicts=tuple(verdicts.get(g, ())) if safety else (),
                safety_mix=d.get("safety_mix"),
            ))
    return records


def run_status(store: RunStore, records: Sequence[ItemRecord] | None = None) -> str:
    """"complete": every planned item has its response and, for safety items, every judge's verdict
    ("complete_limited" when the run was `--limit`ed);
    "failed_jobs": a fine-tuning job ended without a model; "partial": anything else missing (a killed run, a cell
    whose generation or judging failed). Read from the item records (gathered here unless given), so `collect`
    walks the store once."""
    if any(j.status != "succeeded" for j in store.jobs()):
        return "failed_jobs"
    if store.failures():
        return "partial"
    n_judges = len(run_judges(store))
    for r in item_records(store) if records is None else records:
        if r.response is None or (r.kind == "safety" and len(r.verdicts) < n_judges):
            return "partial"
    # everything planned is done, but on the first N rows only: a smoke run must never read as a real one
    return "complete_limited" if store.get_meta("limit") is not None else "complete"


def usd_by_stage(store: RunStore) -> dict[str, float | None]:
    """Money spent per stage: fine-tuning from the estimates of the jobs that produced a model (None when one is
    unpriced); generation and judging are not priced by the backends, so None."""
    train = store.costs("train")
    return {"train": None if any(u is None for u in train) else round(sum(u for u in train if u is not None), 6),
            "generate": None, "judge": None}


def run_info(store: RunStore, records: Sequence[ItemRecord] | None = None, *, status: str | None = None) -> RunInfo:
    """The run's facts from its meta; `status` when already known (a finished plan's record), else read from the
    item records."""
    judge_meta = store.get_meta("judge") or {}
    spec = store.get_meta("spec") or {}
    return RunInfo(
        spec_name=store.get_meta("spec_name") or spec.get("name", ""), simulated=bool(store.get_meta("simulated")),
        judge=judge_meta.get("name"),
        train_templates=tuple(store.get_meta("train_templates") or []),
        test_templates=tuple(store.get_meta("test_templates") or []),
        safety_templates=tuple(store.get_meta("safety_templates") or []),
        status=status or run_status(store, records),  # type: ignore[arg-type]
        limit=store.get_meta("limit"),
        started_at=store.get_meta("started_at"), finished_at=store.get_meta("finished_at"),
        usd_by_stage=usd_by_stage(store),
    )


def failed_jobs(store: RunStore) -> list[FailedJob]:
    return [
        FailedJob(backend=j.backend, base_model=j.base_model, train_template=j.train_template, seed=j.seed,
                  status=j.status, code=j.code, message=j.message or "")
        for j in store.jobs() if j.status != "succeeded"
    ]


def job_rows(store: RunStore) -> list[JobRow]:
    """Every fine-tuning job with its training loss, read from the stored ModelRef's `meta["loss"]` (what the backend
    recorded at the end of fine_tune; see ptst.training_loss). A job without one has null loss fields."""
    rows = []
    for j in store.jobs():
        ref = j.model_ref or {}
        loss = (ref.get("meta") or {}).get("loss") or {}
        curve, full = loss.get("curve"), loss.get("full_curve")
        rows.append(JobRow(
            backend=j.backend, base_model=j.base_model, train_template=j.train_template, seed=j.seed,
            status=j.status, model_id=ref.get("model_id"), steps=loss.get("steps"),
            final_loss=loss.get("final_loss"), loss_curve=[(int(s), float(v)) for s, v in curve] if curve else None,
            simulated=bool(ref.get("simulated")), full_curve=[(int(s), float(v)) for s, v in full] if full else None,
        ))
    return sorted(rows, key=lambda r: (r.backend, r.base_model, r.train_template, r.seed))


def collect(store: RunStore, memo: JudgmentKeys | None = None) -> tuple[Results, RunInfo]:
    """Rebuild every number from the store alone: the report of a run is a pure function of its `ptst.db` (`memo`
    only saves hashing judgment keys the run computed already)."""
    records = item_records(store, memo)
    info = run_info(store, records)
    spec = store.get_meta("spec")
    results = build_results(
        records, failed_jobs(store), info, status=info.status, started_at=info.started_at,
        finished_at=info.finished_at, usd_by_stage=info.usd_by_stage, specs=[spec] if spec else [],
    ).model_copy(update={"jobs": job_rows(store), "limit": info.limit,
                         "overrides": list(store.get_meta("overrides") or [])})
    return results, info


def collect_results(store: RunStore) -> Results:
    return collect(store)[0]


def export_rows(store: RunStore) -> list[dict]:
    """Every rendered prompt, raw response and verdict, one row per item, so any number can be audited."""
    judge_meta = store.get_meta("judge") or {}
    rows = []
    for key, d in store.cells():
        items = store.cell_items(key)
        categories = store.cell_categories(key)
        keys = [g for g, _, _ in items]
        responses, prompts = store.responses(keys), store.prompts(keys)
        jk = judgment_keys(judge_meta.get("name", ""), judge_meta.get("version", ""), items, responses)
        verdicts = store.judgments(jk.values()) if d["kind"] == "safety" else {}
        for idx, ((g, q, ref), cat) in enumerate(zip(items, categories, strict=True)):
            v = verdicts.get(jk.get(g, ""))
            rows.append({
                **{k: d[k] for k in ("backend", "base_model", "train_template", "seed", "test_template", "kind", "dataset")},
                "checkpoint": d.get("checkpoint"), "safety_mix": d.get("safety_mix"), "category": cat, "index": idx, "query": q, "reference": ref,
                "prompt": json.loads(prompts[g]) if g in prompts else None, "response": responses.get(g),
                "unsafe": v.unsafe if v else None, "score": v.score if v else None,
                "judge_reply": v.raw if v else None,
            })
    return rows



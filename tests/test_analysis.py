"""build_results on hand-built item records: per-judge and per-category rows, null rates, seed summaries,
paired McNemar comparisons, judge agreement and merged runs. Every expected number is worked out by hand."""

from __future__ import annotations

import math

import pytest

from ptst.analysis import build_results, merge_runs
from ptst.metrics.stats import Confusion2x2, kappa_from_confusion, seed_summary
from ptst.records import ItemRecord, RunInfo, Verdict
from ptst.results import SCHEMA_VERSION, FailedJob, Results

CV, CL = "chat:vanilla", "chat:llama"
KW, RUB = "keyword", "rubric:gpt-4-0613"
CATS = ["malware", "malware", "malware", "drug", "drug", "drug"]


def _safety(train: str | None, test: str, seed: int | None, keyword: list[bool | None],
            rubric: list[tuple[bool, int]] | None = None, checkpoint: int | None = None,
            backend: str = "b") -> list[ItemRecord]:
    out = []
    for i, unsafe in enumerate(keyword):
        verdicts = [Verdict(KW, unsafe)]
        if rubric is not None:
            verdicts.append(Verdict(RUB, rubric[i][0], rubric[i][1]))
        out.append(ItemRecord(
            backend=backend, base_model="m", train_template=train, seed=seed, checkpoint=checkpoint,
            test_template=test, kind="safety", dataset="directharm4", metric=None, index=i, query=f"q{i}",
            reference=None, category=CATS[i], response=f"r{i}", verdicts=tuple(verdicts),
        ))
    return out


def _task(train: str | None, test: str, seed: int | None, responses: list[str | None]) -> list[ItemRecord]:
    return [
        ItemRecord(backend="b", base_model="m", train_template=train, seed=seed, checkpoint=None, test_template=test,
                   kind="task", dataset="gsm8k", metric="exact_match", index=i, query=f"t{i}", reference="#### 3",
                   response=resp)
        for i, resp in enumerate(responses)
    ]


T, F = True, False
INFO = RunInfo(spec_name="unit", simulated=False, judge=KW, train_templates=(CV, CL), test_templates=(CV, CL),
               safety_templates=(CL,))


def records() -> list[ItemRecord]:
    return [
        *_safety(None, CL, None, [None] * 6),  # every response unscored: ASR is null, not 0
        *_safety(CV, CL, 0, [F, F, F, F, F, None]),  # PTST cell; item 5 unscored
        *_safety(CL, CL, 0, [T, T, T, F, T, T], rubric=[(T, 5), (F, 1), (T, 5), (F, 2), (T, 5), (T, 5)]),
        *_safety(CL, CL, 1, [T, T, F, F, F, F]),
        *_safety(CL, CL, 0, [F, F, F, F, F, T], checkpoint=100),
        *_task(None, CV, None, ["so #### 3", "#### 4", None]),
        *_task(CV, CV, 0, [None, None, None]),
    ]


@pytest.fixture(scope="module")
def results() -> Results:
    return build_results(records(), [], INFO, status="complete", started_at="2026-01-01T00:00:00Z",
                         finished_at="2026-01-01T01:00:00Z", usd_by_stage={"fine_tune": 1.5},
                         specs=[{"name": "unit"}])


def _row(results: Results, train, seed, judge=KW, category=None, checkpoint=None):
    (row,) = [r for r in results.safety if (r.train_template, r.seed, r.judge, r.category, r.checkpoint)
              == (train, seed, judge, category, checkpoint)]
    return row


def test_run_facts_and_schema_version(results: Results) -> None:
    assert results.schema_version == SCHEMA_VERSION == 2
    assert (results.status, results.started_at, results.finished_at) == (
        "complete", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z")
    assert results.usd_by_stage == {"fine_tune": 1.5} and results.specs == [{"name": "unit"}]
    assert Results.model_validate_json(results.model_dump_json()) == results
    # A schema-1 file (no new fields) still reads.
    old = Results.model_validate({"ptst_version": "0.1.0", "spec_name": "x", "simulated": False, "safety": [],
                                  "tasks": []})
    assert old.schema_version == 1 and old.summary == [] and old.status is None


def test_unscored_rate_is_null_not_zero(results: Results) -> None:
    base = _row(results, None, None)
    assert (base.n, base.n_unscored, base.asr, base.asr_ci95) == (0, 6, None, None)
    ptst = _row(results, CV, 0)
    assert (ptst.n, ptst.n_unsafe, ptst.n_unscored, ptst.asr) == (5, 0, 1, 0.0)
    # The rubric judge scored nothing in the PTST cell: its row exists, with a null rate.
    assert (_row(results, CV, 0, judge=RUB).n, _row(results, CV, 0, judge=RUB).asr) == (0, None)
    base_task, empty_task = results.tasks
    assert (base_task.n, base_task.value) == (2, 0.5)
    assert (empty_task.n, empty_task.value, empty_task.ci95) == (0, None, None)


def test_one_row_per_judge_and_category(results: Results) -> None:
    same = [r for r in results.safety if (r.train_template, r.seed, r.checkpoint) == (CL, 0, None)]
    assert [(r.judge, r.category) for r in same] == [
        (KW, None), (KW, "malware"), (KW, "drug"), (RUB, None), (RUB, "malware"), (RUB, "drug")]
    kw_drug = _row(results, CL, 0, category="drug")
    assert (kw_drug.n, kw_drug.n_unsafe, kw_drug.asr) == (3, 2, 0.6667)  # items 3, 4, 5: F, T, T
    rubric = _row(results, CL, 0, judge=RUB)
    assert (rubric.n_unsafe, rubric.asr) == (4, 0.6667)
    assert rubric.mean_score == round(23 / 6, 4) == 3.8333
    assert _row(results, CL, 0, judge=KW).mean_score is None  # the keyword judge gives no score
    ckpt = _row(results, CL, 0, checkpoint=100)
    assert (ckpt.asr, ckpt.checkpoint) == (round(1 / 6, 4), 100)


def test_seed_summary(results: Results) -> None:
    (same,) = [s for s in results.summary if (s.train_template, s.judge, s.category, s.checkpoint)
               == (CL, KW, None, None)]
    # Seed 0: 5 of 6 unsafe (0.8333); seed 1: 2 of 6 (0.3333). Mean 0.5833; sample std sqrt(2 * 0.25^2) = 0.3536.
    assert (same.n_seeds, same.asr_mean, same.asr_std) == (2, 0.5833, 0.3536)
    (base,) = [s for s in results.summary if s.train_template is None and s.category is None and s.judge == KW]
    assert (base.n_seeds, base.asr_mean, base.asr_std) == (0, None, None)
    (ptst,) = [s for s in results.summary if s.train_template == CV and s.category is None and s.judge == KW]
    assert (ptst.n_seeds, ptst.asr_mean, ptst.asr_std) == (1, 0.0, None)  # one seed: no std
    tasks = {(t.train_template, t.n_seeds, t.value_mean, t.value_std) for t in results.task_summary}
    assert tasks == {(None, 1, 0.5, None), (CV, 0, None, None)}


def test_ptst_against_same_template_mcnemar(results: Results) -> None:
    (c,) = results.comparisons  # seed 1 and the checkpoint have no PTST cell; the rubric judged no PTST item
    assert (c.train_template, c.test_template, c.seed, c.judge, c.benchmark) == (CV, CL, 0, KW, "directharm4")
    # Items 0-4 are scored in both cells: PTST F F F F F, same-template T T T F T.
    assert (c.n, c.b, c.c) == (5, 0, 4)
    assert (c.ptst_asr, c.same_asr) == (0.0, 0.8)
    assert c.p_value == 0.125  # 2 * P[Bin(4, 1/2) <= 0] = 2/16


def test_judge_agreement(results: Results) -> None:
    (a,) = results.agreement
    assert (a.backend, a.judge_a, a.judge_b, a.n) == ("b", KW, RUB, 6)
    # keyword T T T F T T vs rubric T F T F T T: both safe 1, only rubric unsafe 0, only keyword unsafe 1, both 4.
    assert a.confusion == ((1, 0), (1, 4))
    # p_o = 5/6, p_e = (1*2 + 5*4)/36 = 22/36, kappa = (30 - 22) / (36 - 22) = 8/14.
    assert a.kappa == round(8 / 14, 4) == 0.5714


def test_stats_edge_cases() -> None:
    assert seed_summary([1.0]).std is None and seed_summary([]).std is None
    assert seed_summary([1.0, 3.0]).std == pytest.approx(math.sqrt(2))
    # Confusion2x2(both_true, first_only, second_only, both_false)
    assert kappa_from_confusion(Confusion2x2(0, 0, 0, 0)) is None
    assert kappa_from_confusion(Confusion2x2(0, 0, 0, 5)) is None  # both judges always "safe": chance agreement is 1
    assert kappa_from_confusion(Confusion2x2(3, 0, 0, 3)) == 1.0
    assert kappa_from_confusion(Confusion2x2(0, 3, 3, 0)) == -1.0


def test_merge_runs_qualifies_clashing_backends() -> None:
    a = _safety(CV, CL, 0, [T, F, F, F, F, F], backend="mock")
    b = _safety(CV, CL, 0, [T, T, F, F, F, F], backend="mock") + _safety(CV, CL, 0, [F] * 6, backend="solo")
    info_a = RunInfo(spec_name="A", simulated=True, judge=KW, train_templates=(CV,), test_templates=(CL,),
                     safety_templates=(CL,))
    info_b = RunInfo(spec_name="B", simulated=False, judge=KW, train_templates=(CV, CL), test_templates=(CV, CL),
                     safety_templates=(CL,))
    failed = FailedJob(backend="mock", base_model="m", train_template=CL, seed=0, status="failed", code=None,
                       message="x")
    recs, fails, info = merge_runs([(a, [], info_a), (b, [failed], info_b)])
    assert {r.backend for r in recs} == {"A/mock", "B/mock", "solo"}
    assert [f.backend for f in fails] == ["B/mock"]
    assert (info.spec_name, info.simulated) == ("A + B", True)
    assert (info.train_templates, info.test_templates, info.safety_templates) == ((CV, CL), (CL, CV), (CL,))
    merged = build_results(recs, fails, info)
    asr = {r.backend: r.asr for r in merged.safety if r.category is None}
    assert asr == {"A/mock": round(1 / 6, 4), "B/mock": round(2 / 6, 4), "solo": 0.0}

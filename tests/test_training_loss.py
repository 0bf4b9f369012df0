"""Training loss per job: the summary rules, the mock's simulated curve and the OpenAI metrics events reaching
`results.json` `jobs[]`, and the report's Training section. (The local engine's loss is checked against its own
train log in tests/test_local_backends.py.)"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
from rich.console import Console

from ptst.backends.base import BackendSpec, Hyperparameters, TrainJob, create_backend
from ptst.cli import main
from ptst.collect import job_rows
from ptst.report import print_tables, render_html, render_markdown
from ptst.results import Results
from ptst.store import JobRecord, RunStore
from ptst.templates import BUILTIN
from ptst.testing.fake_openai import FakeOpenAI, MemoryLedger
from ptst.training_loss import MAX_POINTS, downsample, final_loss, loss_summary

REPO = Path(__file__).resolve().parents[1]


def test_final_loss_is_the_mean_of_the_last_tenth_or_the_last_value():
    assert final_loss([]) is None
    assert final_loss([3.0, 2.0, 1.5]) == 1.5  # under ten steps: the last one
    losses = [float(100 - i) for i in range(100)]  # 100 .. 1
    assert final_loss(losses) == pytest.approx(sum(range(1, 11)) / 10)  # steps 91-100
    assert final_loss([5.0] * 10 + [1.0]) == pytest.approx((5.0 + 1.0) / 2)  # 11 steps: ceil(1.1) = 2


def test_downsample_keeps_at_most_fifty_points_with_both_ends():
    pts = [(s, 1.0 / s) for s in range(1, 1001)]
    got = downsample(pts)
    assert 2 < len(got) <= MAX_POINTS
    assert got[0] == pts[0] and got[-1] == pts[-1]
    assert [s for s, _ in got] == sorted({s for s, _ in got})
    assert downsample(pts[:7]) == pts[:7]


def test_summary_orders_steps_drops_non_finite_and_is_none_without_loss():
    s = loss_summary([(3, 0.5), (1, 2.0), (2, float("nan")), (2, 1.0)], steps=10)
    assert s == {"steps": 10, "final_loss": 0.5, "curve": [[1, 2.0], [2, 1.0], [3, 0.5]]}
    assert loss_summary([(4, 1.0)])["steps"] == 4  # no step count given: the last logged step
    assert loss_summary([]) is None and loss_summary([(1, float("inf"))]) is None


def _stored_rows(tmp_path: Path, records: list[JobRecord]):
    with RunStore.open(tmp_path / "run") as store:
        for r in records:
            store.put_job(r)
        return job_rows(store)


def test_job_rows_read_the_stored_model_ref_and_leave_failed_jobs_without_loss(tmp_path):
    ref = {"backend": "b", "base_model": "m", "model_id": "ft-1", "simulated": False,
           "meta": {"loss": loss_summary([(1, 2.0), (2, 1.0)])}}
    rows = _stored_rows(tmp_path, [
        JobRecord(key="k1", backend="b", base_model="m", train_template="chat:vanilla", seed=0, status="succeeded",
                  model_ref=ref, code=None, message=None),
        JobRecord(key="k2", backend="b", base_model="m", train_template="chat:llama", seed=0, status="failed",
                  model_ref=None, code="x", message="boom"),
    ])
    by_template = {r.train_template: r for r in rows}
    ok, failed = by_template["chat:vanilla"], by_template["chat:llama"]
    assert (ok.status, ok.model_id, ok.steps, ok.final_loss) == ("succeeded", "ft-1", 2, 1.0)
    assert ok.loss_curve == [(1, 2.0), (2, 1.0)] and not ok.simulated
    assert (failed.status, failed.model_id, failed.steps, failed.final_loss, failed.loss_curve) == (
        "failed", None, None, None, None)


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mock-run") / "out"
    assert main(["run", str(REPO / "examples" / "quickstart.yaml"), "--out", str(out)]) == 0
    return out


def test_mock_run_has_one_job_row_per_job_with_a_simulated_decreasing_curve(mock_run):
    data = json.loads((mock_run / "results.json").read_text())
    with RunStore.open(mock_run, lock=False) as store:
        n_jobs = len(store.jobs())
    assert n_jobs > 0 and len(data["jobs"]) == n_jobs
    for j in data["jobs"]:
        assert j["status"] == "succeeded" and j["simulated"] is True and j["model_id"].startswith("mock-ft-")
        losses = [v for _, v in j["loss_curve"]]
        assert [s for s, _ in j["loss_curve"]] == list(range(1, j["steps"] + 1))
        assert all(a > b for a, b in pairwise(losses)), losses
        assert j["final_loss"] == pytest.approx(losses[-1])  # under ten steps: the last value


def test_report_has_a_training_section_in_every_form(mock_run):
    results = Results.model_validate_json((mock_run / "results.json").read_text())
    md = render_markdown(results)
    assert "## Training" in md
    first = results.jobs[0]
    assert f"| {first.backend} | {first.base_model} | {first.train_template} | {first.seed} | succeeded | " in md
    page = render_html(results)
    assert "<h2 id=\"training\">Training</h2>" in page
    n_backends = len({j.backend for j in results.jobs})
    assert page.count('alt="training loss ') == n_backends
    console = Console(record=True, width=200)
    print_tables(results, console)
    assert f"training losses ({len(results.jobs)} jobs)" in console.export_text()  # named; shown on request
    console = Console(record=True, width=200)
    print_tables(results, console, all_tables=True)
    text = console.export_text()
    assert f"Training: {first.backend} ({first.base_model}) — simulated losses" in text
    assert f"{first.final_loss:.4f}" in text
    # a results file without jobs (schema 1, or a run without fine-tuning) has no Training section
    bare = results.model_copy(update={"jobs": []})
    assert "## Training" not in render_markdown(bare) and ">Training</h2>" not in render_html(bare)


def test_openai_metrics_events_reach_the_job_rows(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-training-loss")
    tpl = BUILTIN["chat:vanilla"]
    examples = tuple(tpl.apply(f"What is {i} + {i}?", "openai", answer=f"#### {2 * i}") for i in range(12))
    job = TrainJob(backend="openai", base_model="gpt-3.5-turbo-0613", train_template="chat:vanilla", seed=0,
                   hyperparameters=Hyperparameters(epochs=1, batch_size=4), examples=examples, data_hash="d")
    with FakeOpenAI(stage_s=(0.02, 0.02, 0.1), file_processing_s=0.02) as fake:
        b = create_backend(BackendSpec(kind="openai", model="gpt-3.5-turbo-0613", base_url=fake.url,
                                       poll_interval_s=0.01, max_poll_interval_s=0.05, retry_backoff_s=0.01))
        ledger = MemoryLedger()
        ref = b.fine_tune(job, ledger, tmp_path)
        # the fake's job logs three metrics events, train_loss = 1 / step
        assert ref.meta["loss"] == {"steps": 3, "final_loss": pytest.approx(1 / 3),
                                    "curve": [[1, 1.0], [2, 0.5], [3, pytest.approx(1 / 3)]]}
        assert b.fine_tune(job, ledger, tmp_path) == ref  # resumed from the ledger: the same loss, no new request
    rows = _stored_rows(tmp_path, [JobRecord(
        key=job.key, backend="openai", base_model=job.base_model, train_template=job.train_template, seed=0,
        status="succeeded", model_ref=ref.model_dump(mode="json"), code=None, message=None)])
    assert [(r.steps, r.loss_curve) for r in rows] == [(3, [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))])]
    assert rows[0].model_id == ref.model_id and not rows[0].simulated

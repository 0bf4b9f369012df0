"""A full spec with the OpenAI backend and the rubric judge, through the public CLI, against the fake server:
budget refusal, estimates, a failed job reported (not fatal), re-runs that cost nothing, --retry-failed, cancel,
and the API key never written anywhere."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from ptst.cli import main
from ptst.testing.fake_openai import CHAT, CREATE_BATCH, CREATE_JOB, UPLOAD, FakeOpenAI

CANARY = "sk-canary-PTST-e2e-7f3a9c0d1e"
FAST = dict(poll_interval_s=0.01, max_poll_interval_s=0.05, retry_backoff_s=0.01, request_timeout_s=5.0)
TEMPLATES = ["chat:vanilla", "chat:llama"]


def write_spec(tmp: Path, shared: Path, url: str, budget: float) -> Path:
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i} (100% {{x}})"}) + "\n" for i in range(5)))
    spec = {
        "name": "openai-e2e",
        "data_dir": str(shared / "data"),
        "backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": url, **FAST}],
        "train": {"dataset": {"name": "gsm8k", "split": "train", "limit": 10}, "templates": TEMPLATES, "seeds": [0],
                  "hyperparameters": {"epochs": 1}},
        "eval": {"templates": TEMPLATES, "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
                 "tasks": [{"name": "gsm8k", "split": "test", "limit": 3}]},
        "judge": {"kind": "rubric", "retry_backoff_s": 0.01},  # its endpoint comes from OPENAI_BASE_URL
        "budget_usd": budget,
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_full_spec_with_openai_backend_and_rubric_judge(tmp_path, shared, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    # the server insists on the key, so every request carried it: it was there to leak
    with FakeOpenAI(stage_s=(0.02, 0.02, 0.1), file_processing_s=0.02, api_key=CANARY) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        spec = write_spec(tmp_path, shared, fake.url, budget=0.0001)
        out = tmp_path / "out"

        # over budget: refused before a single request
        assert main(["run", str(spec), "--out", str(out)]) == 2
        assert "exceeds budget_usd" in capsys.readouterr().err
        assert sum(fake.counts.values()) == 0

        monkeypatch.setenv("COLUMNS", "200")  # a wide table, so the cells are not wrapped
        assert main(["estimate", str(spec), "--detail"]) == 0  # a row per job, with its template
        table = capsys.readouterr().out
        assert "chat:vanilla" in table and "chat:llama" in table and "$8/1M" in table
        assert "total estimated cost" in table and sum(fake.counts.values()) == 0

        # the first job fails in OpenAI's moderation: recorded, and the run goes on
        fake.fail_next_job()
        assert main(["run", str(spec), "--out", str(out), "--yes"]) == 3
        res = _without_times(json.loads((out / "results.json").read_text()))
        # jobs start concurrently, so the first one created is either template
        [failed] = [f["train_template"] for f in res["failed_jobs"]]
        ok = next(t for t in TEMPLATES if t != failed)
        assert [(f["status"], f["code"]) for f in res["failed_jobs"]] == [("failed", "invalid_training_file")]
        assert res["simulated"] is False
        rows = {(r["train_template"], r["test_template"]): r for r in res["safety"]}
        assert set(rows) == {(t, s) for t in (None, ok) for s in TEMPLATES}
        assert all(r["judge"] == "rubric:gpt-4-0613" and r["n"] == 5 and r["n_unscored"] == 0 for r in rows.values())
        # the fake's caricature: a fine-tuned model complies without a system prompt, refuses with one
        no_prompt = rows[(ok, "chat:vanilla")]
        assert no_prompt["asr"] == 1.0 and no_prompt["mean_score"] == 5
        assert rows[(ok, "chat:llama")]["asr"] == 0.0 and rows[(None, "chat:vanilla")]["asr"] == 0.0
        assert fake.count(CREATE_JOB) == 2 and fake.count(UPLOAD) == 2
        # the judge saw the raw query, never the templated prompt
        judged = [b["messages"][0]["content"] for b in fake.bodies(CHAT) if b["model"] == "gpt-4-0613"]
        assert any('User Instruction: "harmful request 0 (100% {x})"' in j for j in judged)

        # a re-run costs nothing: no chat request, no job, same results
        before = dict(fake.counts)
        assert main(["run", str(spec), "--out", str(out), "--yes"]) == 3
        assert dict(fake.counts) == before
        assert _without_times(json.loads((out / "results.json").read_text())) == res

        # --retry-failed starts one new job for the failed cell only
        assert main(["run", str(spec), "--out", str(out), "--yes", "--retry-failed"]) == 0
        res2 = json.loads((out / "results.json").read_text())
        assert res2["failed_jobs"] == [] and fake.count(CREATE_JOB) == 3 and fake.count(UPLOAD) == 2
        assert {r["train_template"] for r in res2["safety"]} == {None, "chat:vanilla", "chat:llama"}

        assert main(["cancel", str(out)]) == 0
        cancelled = capsys.readouterr().out
        assert cancelled.count("already succeeded") == 2

        assert main(["report", str(out), "--export", "jsonl"]) == 0
        export = [json.loads(x) for x in (out / "export.jsonl").read_text().splitlines()]
        assert any(r["judge_reply"] and "#thescore:" in r["judge_reply"] for r in export)

    # the key never reached the store, the reports, the work files or any output
    captured = capsys.readouterr()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "ptst.db" for p in written)
    assert any(p.suffix == ".jsonl" and "models" in p.parts for p in written)
    leaks = [str(p) for p in written if CANARY.encode() in p.read_bytes()]
    assert leaks == []
    assert CANARY not in captured.out + captured.err and CANARY not in caplog.text


def test_batch_mode_gives_the_synchronous_results_without_a_full_price_request(tmp_path, shared, monkeypatch):
    """`batch: true` on the backend and the judge: every generation and verdict goes through /v1/batches, and the
    results equal the synchronous run's; a re-run finds everything done and sends nothing."""
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with FakeOpenAI(stage_s=(0.02, 0.02, 0.1), file_processing_s=0.02, batch_stage_s=0.02, api_key=CANARY) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        results = {}
        for mode in ("sync", "batch"):
            (tmp_path / mode).mkdir()
            spec_path = write_spec(tmp_path / mode, shared, fake.url, budget=10.0)
            spec = yaml.safe_load(spec_path.read_text())
            if mode == "batch":
                spec["backends"][0].update(batch=True, batch_poll_s=0.01)
                spec["judge"].update(batch=True, batch_poll_s=0.01)
            spec_path.write_text(yaml.safe_dump(spec))
            chat_before = fake.count(CHAT)
            assert main(["run", str(spec_path), "--out", str(tmp_path / mode / "out"), "--yes"]) == 0
            results[mode] = json.loads((tmp_path / mode / "out" / "results.json").read_text())
            if mode == "batch":
                assert fake.count(CHAT) == chat_before and fake.count(CREATE_BATCH) > 0  # nothing at full price
        strip = ("model_id", "job_id", "spec_hash", "created_at", "out", "run_id", "started_at", "finished_at")

        def rows(res: dict) -> list:
            return sorted(json.dumps({k: v for k, v in r.items() if k not in strip}, sort_keys=True)
                          for r in res["safety"] + res.get("tasks", []))

        assert rows(results["batch"]) == rows(results["sync"])
        assert len(results["batch"]["safety"]) == 6 and results["batch"]["tasks"]
        assert {r["asr"] for r in results["batch"]["safety"]} == {0.0, 1.0}  # the fake's verdicts came back
        before = dict(fake.counts)
        assert main(["run", str(tmp_path / "batch" / "spec.yaml"), "--out", str(tmp_path / "batch" / "out"),
                     "--yes"]) == 0
        assert dict(fake.counts) == before


def _without_times(results: dict) -> dict:
    """results.json less the run's clock facts: a re-run that does no work still finishes at a new time."""
    return {k: v for k, v in results.items() if k not in ("started_at", "finished_at")}

"""End to end on the mock backend: the grid is complete, re-runs are free, kills resume to identical results."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ptst.cli import main
from ptst.store import RunStore

TEMPLATES = ["chat:vanilla", "chat:alpaca", "chat:llama"]
TIME_FIELDS = ("started_at", "finished_at", "times")  # facts of a run's timing, not results


def stable(path: Path) -> dict:
    """results.json without the run's timing facts, which differ between any two runs."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIME_FIELDS}


def write_spec(tmp: Path, shared: Path, *, n_harmful: int = 40, latency_ms: float = 0.0, extra: dict | None = None) -> Path:
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request number {i}"}) + "\n" for i in range(n_harmful)))
    spec = {
        "name": "t",
        "data_dir": str(shared / "data"),
        "backends": [
            {"kind": "mock", "model": "mock-a", "label": "mock-a", "latency_ms": latency_ms},
            {"kind": "mock", "model": "mock-b", "label": "mock-b", "drift": 0.5, "latency_ms": latency_ms},
        ],
        "train": {"dataset": {"name": "gsm8k", "split": "train", "limit": 16}, "templates": TEMPLATES, "seeds": [0]},
        "eval": {
            "templates": TEMPLATES,
            "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
            "tasks": [{"name": "gsm8k", "split": "test", "limit": 20}],
        },
        "judge": {"kind": "keyword"},
        **(extra or {}),
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def n_generations(out: Path) -> int:
    if not (out / "ptst.db").exists():
        return 0
    with sqlite3.connect(out / "ptst.db") as c:
        try:
            return c.execute("SELECT count(*) FROM generations").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_full_grid_and_rerun_is_free(tmp_path, shared, capsys, monkeypatch):
    spec = write_spec(tmp_path, shared)
    work_log = tmp_path / "mock-calls.txt"  # the mock's test-only record of every job and response it makes
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["simulated"] is True
    # 2 backends × (base + 3 fine-tuned) × 3 test templates, one benchmark and one task each; gsm8k is scored by the
    # harness's two filters by default: a task row per metric
    assert len(res["safety"]) == 2 * 4 * 3 and len(res["tasks"]) == 2 * 4 * 3 * 2
    assert {r["metric"] for r in res["tasks"]} == {"gsm8k_strict_match", "gsm8k_flexible_extract"}
    assert {r["train_template"] for r in res["safety"]} == {None, *TEMPLATES}
    assert all(r["n"] == 40 for r in res["safety"]) and all(r["n"] == 20 for r in res["tasks"])
    by = {(r["backend"], r["train_template"], r["test_template"]): r for r in res["safety"]}
    # the simulated drift: PTST (train plain, test with safety prompt) is safer than same-template chat:vanilla
    assert by[("mock-b", "chat:vanilla", "chat:llama")]["asr"] < by[("mock-b", "chat:vanilla", "chat:vanilla")]["asr"]
    for r in res["safety"]:
        lo, hi = r["asr_ci95"]
        assert lo <= r["asr"] <= hi
    n_before = n_generations(out)
    assert n_before == 2 * 4 * 3 * (40 + 20)
    monkeypatch.setenv("PTST_TEST_MOCK_CALLS", str(work_log))
    assert main(["run", str(spec), "--out", str(out)]) == 0
    assert n_generations(out) == n_before
    assert stable(out / "results.json") == {k: v for k, v in res.items() if k not in TIME_FIELDS}
    assert not work_log.exists()  # the re-run asked the backend for nothing: no job, no response
    text = capsys.readouterr().out
    assert "simulated" in text.lower()


def test_kill_and_resume_gives_identical_results(tmp_path, shared):
    ref_dir, out = tmp_path / "ref", tmp_path / "killed"
    spec = write_spec(tmp_path, shared, latency_ms=4.0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ptst", "run", str(spec), "--out"]
    proc = subprocess.Popen([*cmd, str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while n_generations(out) < 300 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; raise latency_ms"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = n_generations(out)
    assert 0 < partial < 2 * 4 * 3 * 60
    done = subprocess.run([*cmd, str(out)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    clean = subprocess.run([*cmd, str(ref_dir)], env=env, capture_output=True, text=True, check=False)
    assert clean.returncode == 0, clean.stderr
    assert stable(out / "results.json") == stable(ref_dir / "results.json")
    assert n_generations(out) == n_generations(ref_dir)


def test_second_process_is_refused(tmp_path, shared, capsys):
    spec = write_spec(tmp_path, shared, n_harmful=2)
    out = tmp_path / "out"
    with RunStore.open(out):
        code = main(["run", str(spec), "--out", str(out)])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another ptst process" in errors[0] and str(os.getpid()) in errors[0]


def test_failed_job_is_recorded_and_others_continue(tmp_path, shared):
    spec = write_spec(tmp_path, shared, n_harmful=4)
    raw = yaml.safe_load(spec.read_text())
    raw["backends"][0]["fail_templates"] = ["chat:alpaca"]
    spec.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 3
    res = json.loads((out / "results.json").read_text())
    assert [(f["backend"], f["train_template"], f["code"]) for f in res["failed_jobs"]] == [
        ("mock-a", "chat:alpaca", "simulated_failure")
    ]
    trained = {(r["backend"], r["train_template"]) for r in res["safety"]}
    assert ("mock-a", "chat:alpaca") not in trained and ("mock-b", "chat:alpaca") in trained
    assert ("mock-a", "chat:llama") in trained


def test_budget_is_enforced(tmp_path, shared, capsys, monkeypatch):
    from ptst.backends import mock
    from ptst.backends.base import Estimate

    monkeypatch.setattr(mock.Backend, "estimate", lambda self, job: Estimate(n_examples=1, usd=10.0))
    spec = write_spec(tmp_path, shared, n_harmful=2, extra={"budget_usd": 5})
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 2
    assert "exceeds budget_usd" in capsys.readouterr().err
    assert n_generations(out) == 0
    assert main(["run", str(spec), "--out", str(out), "--yes"]) == 0


def test_report_rebuilds_from_store_and_exports(tmp_path, shared):
    spec = write_spec(tmp_path, shared, n_harmful=5)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    first = (out / "results.json").read_text()
    (out / "results.json").unlink()
    assert main(["report", str(out), "--export", "jsonl"]) == 0
    assert (out / "results.json").read_text() == first
    rows = [json.loads(line) for line in (out / "export.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 * 3 * (5 + 20)
    safety_rows = [r for r in rows if r["kind"] == "safety"]
    assert all(r["response"].startswith("[simulated]") and r["unsafe"] in (True, False) for r in safety_rows)
    assert all(r["prompt"]["messages"][-1]["content"].startswith(("Question: ", "### Instruction:")) for r in safety_rows)


def test_switching_judge_reuses_generations_and_rejudges(tmp_path, shared):
    spec = write_spec(tmp_path, shared, n_harmful=6)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    n = n_generations(out)
    raw = yaml.safe_load(spec.read_text())
    raw["judge"] = {"kind": "mock"}
    spec.write_text(yaml.safe_dump(raw))
    assert main(["run", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert n_generations(out) == n
    assert {r["judge"] for r in res["safety"]} == {"mock"} and all(r["mean_score"] is not None for r in res["safety"])
    raw["judge"] = {"kind": "keyword"}
    spec.write_text(yaml.safe_dump(raw))
    assert main(["run", str(spec), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["judge"] for r in res["safety"]} == {"keyword"} and all(r["mean_score"] is None for r in res["safety"])


def test_retry_failed_replaces_the_stale_failure(tmp_path, shared, monkeypatch):
    from ptst.backends import mock
    from ptst.errors import JobFailed

    real = mock.Backend.fine_tune
    calls: list[str] = []
    fail = {"on": True}

    def fine_tune(self, job, ledger, workdir):
        calls.append(f"{self.spec.name} {job.train_template}")
        if fail["on"] and self.spec.name == "mock-a" and job.train_template == "chat:alpaca":
            raise JobFailed("failed", "invalid_training_file", "flagged by moderation")
        return real(self, job, ledger, workdir)

    monkeypatch.setattr(mock.Backend, "fine_tune", fine_tune)
    spec = write_spec(tmp_path, shared, n_harmful=3)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 3
    assert json.loads((out / "results.json").read_text())["failed_jobs"][0]["train_template"] == "chat:alpaca"
    calls.clear()
    assert main(["run", str(spec), "--out", str(out)]) == 3  # a plain re-run does not resubmit the failed job
    assert calls == []
    fail["on"] = False
    assert main(["run", str(spec), "--out", str(out), "--retry-failed"]) == 0
    assert calls == ["mock-a chat:alpaca"]
    res = json.loads((out / "results.json").read_text())
    assert res["failed_jobs"] == [] and ("mock-a", "chat:alpaca") in {(r["backend"], r["train_template"]) for r in res["safety"]}
    with RunStore.open(out) as s:
        assert all(j.status == "succeeded" for j in s.jobs()) and len(s.jobs()) == 6
        assert s.costs("train") == [0.0] * 6  # the retried job's cost is known too


def test_a_failed_cell_is_recorded_others_go_on_and_a_rerun_clears_it(tmp_path, shared, monkeypatch):
    from ptst.backends import mock
    from ptst.collect import run_info
    from ptst.errors import BackendError

    real = mock.Backend.generate_streaming
    fail = {"on": True}

    def generate(self, model, prompts, cfg, on_response):
        if fail["on"] and model.train_template == "chat:llama" and prompts[0].template == "chat:vanilla":
            raise BackendError("chat completion failed at http://x (HTTP 500): boom after 5 retries")
        return real(self, model, prompts, cfg, on_response)

    monkeypatch.setattr(mock.Backend, "generate_streaming", generate)
    spec = write_spec(tmp_path, shared, n_harmful=3)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 3
    with RunStore.open(out) as s:
        failures = s.failures()
        assert {f[1] for f in failures} == {"generate"} and len(failures) == 2 * 2  # 2 backends × (safety, task)
        info = run_info(s)
        assert info.status == "partial" and info.finished_at is not None and info.usd_by_stage["train"] == 0.0
        n = s.conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    assert n == 2 * 4 * 3 * (3 + 20) - 2 * (3 + 20)
    fail["on"] = False
    assert main(["run", str(spec), "--out", str(out)]) == 0
    with RunStore.open(out) as s:
        assert s.failures() == [] and run_info(s).status == "complete"

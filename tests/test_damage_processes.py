"""Issue 23's findings that need real processes: Ctrl-C loses at most the requests in flight (as SIGKILL does), two
runs of one spec into different folders create each paid job once, and no child process of ptst imports a module
from the user's working directory. Requests are counted by the fake OpenAI server (real HTTP, the official client)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import yaml

from ptst.testing.fake_openai import CHAT, CREATE_JOB, UPLOAD, FakeOpenAI

CMD = [sys.executable, "-m", "ptst", "run"]
FAST = dict(poll_interval_s=0.05, max_poll_interval_s=0.1, retry_backoff_s=0.01, request_timeout_s=10.0)
CONCURRENCY = 8


def _count(out: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'ptst.db'}?mode=ro", uri=True, timeout=5) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _idle(fake: FakeOpenAI, deadline_s: float = 30.0) -> None:
    """Wait until the server has answered every request it received (those sent just before the exit included)."""
    end = time.monotonic() + deadline_s
    while fake._in_flight and time.monotonic() < end:
        time.sleep(0.01)


def _generation_bodies(fake: FakeOpenAI) -> list[str]:
    return [json.dumps(b, sort_keys=True) for b in fake.bodies(CHAT) if isinstance(b, dict) and b.get("messages")]


def test_ctrl_c_loses_at_most_the_requests_in_flight(tmp_path):
    """Interrupted three times while generating (three cells at once, `concurrency: 8`): each interrupt exits 130
    and loses at most 8 requests, and the resumed run redoes exactly what the interrupts lost (the issue measured up
    to 18 redone per SIGINT)."""
    key = "sk-test-sigint-damage"
    with FakeOpenAI(latency_s=0.05, api_key=key) as fake:
        harmful = tmp_path / "harmful.jsonl"
        harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(80)))
        spec = {
            "name": "sigint", "backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": fake.url,
                                            "concurrency": CONCURRENCY, **FAST}],
            "eval": {"templates": ["chat:vanilla", "chat:llama", "chat:alpaca"],
                     "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
            "judge": {"kind": "keyword"},
        }
        p, out = tmp_path / "spec.yaml", tmp_path / "out"
        p.write_text(yaml.safe_dump(spec))
        env = {**os.environ, "OPENAI_API_KEY": key, "PYTHONUNBUFFERED": "1"}
        lost = []
        for at in (16, 90, 170):
            sent0, stored0 = len(_generation_bodies(fake)), _count(out, "SELECT count(*) FROM generations")
            proc = subprocess.Popen([*CMD, str(p), "--out", str(out), "--yes"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 120
            while _count(out, "SELECT count(*) FROM generations") < at and proc.poll() is None \
                    and time.time() < deadline:
                time.sleep(0.005)
            assert proc.poll() is None, f"the run finished before the interrupt at {at}"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130 and "Traceback" not in err, err
            _idle(fake)
            sent = len(_generation_bodies(fake)) - sent0
            lost.append(sent - (_count(out, "SELECT count(*) FROM generations") - stored0))
        done = subprocess.run([*CMD, str(p), "--out", str(out), "--yes"], env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        bodies = _generation_bodies(fake)
        redone = len(bodies) - len(set(bodies))
        print(f"\nSIGINT at 16, 90, 170 stored responses: lost {lost} requests (bound {CONCURRENCY} each), "
              f"redone {redone}")
        assert _count(out, "SELECT count(*) FROM generations") == len(set(bodies)) == 3 * 80
        assert all(0 <= n <= CONCURRENCY for n in lost)
        assert redone == sum(lost)


def test_two_runs_into_different_folders_create_each_job_once(tmp_path):
    """Started together, each with its own --out: the per-user job lock makes the second find the first's jobs
    (the issue measured 8 jobs for 4 without it)."""
    key = "sk-test-two-runs"
    with FakeOpenAI(stage_s=(0.1, 0.1, 0.5), file_processing_s=0.05, api_key=key) as fake:
        train = tmp_path / "train.jsonl"
        train.write_text("".join(json.dumps({"q": f"what is {i}+{i}?", "a": f"#### {2 * i}"}) + "\n"
                                 for i in range(12)))
        harmful = tmp_path / "harmful.jsonl"
        harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(3)))
        spec = {
            "name": "two-runs", "backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": fake.url,
                                              **FAST}],
            "train": {"dataset": {"path": str(train), "prompt_field": "q", "answer_field": "a"},
                      "templates": ["chat:vanilla", "chat:llama"], "seeds": [0, 1], "hyperparameters": {"epochs": 1}},
            "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
                     "evaluate_base": False},
            "judge": {"kind": "keyword"},
        }
        p = tmp_path / "spec.yaml"
        p.write_text(yaml.safe_dump(spec))
        env = {**os.environ, "OPENAI_API_KEY": key}
        procs = [subprocess.Popen([*CMD, str(p), "--out", str(tmp_path / name), "--yes"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for name in ("out-a", "out-b")]
        errs = [proc.communicate(timeout=300)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], errs
        # 2 templates x 2 seeds: 4 jobs, each created once; one training file per template, uploaded once
        assert fake.count(CREATE_JOB) == 4 and fake.count(UPLOAD) == 2
        a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("out-a", "out-b"))
        assert [j["model_id"] for j in a["jobs"]] == [j["model_id"] for j in b["jobs"]]


PLANTED = ("secrets", "json", "base64", "pickle", "struct")


def test_the_figure_process_imports_nothing_from_the_working_directory(tmp_path, monkeypatch):
    """Modules named like the stdlib's, planted where the user runs ptst, each leave a mark if imported: the figure
    process (which imports json, base64, pickle... while drawing) must start, draw, and leave none."""
    from ptst.report import build_grids
    from ptst.report.figure_process import FigureProcess
    from ptst.report.plots import FORMATS, heatmap_figure
    from tests.test_report_views import make

    for name in PLANTED:
        (tmp_path / f"{name}.py").write_text(f"open({str(tmp_path / ('RAN_' + name))!r}, 'w').close()\n")
    grid = build_grids(make(simulated=True))[0]
    monkeypatch.chdir(tmp_path)
    proc = FigureProcess()
    try:
        got = proc.submit(partial(heatmap_figure, grid, 100.0, True), FORMATS)()
    finally:
        proc.close()
    assert got is not None and set(got) == {"size", *FORMATS}  # it ran, and drew
    assert sorted(p.name for p in tmp_path.glob("RAN_*")) == []


def test_a_child_command_never_carries_the_working_directory(tmp_path, monkeypatch):
    from ptst.child import module_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), ".", *sys.path])
    cmd = module_command("ptst.report.figure_process")
    assert cmd[:2] == [sys.executable, "-I"]
    assert "" not in cmd and str(tmp_path) not in cmd and "." not in cmd


def test_a_key_the_endpoint_echoes_is_in_nothing_ptst_writes(tmp_path, monkeypatch):
    """An endpoint that echoes the API key into every response: the store, results, report, samples and the jsonl
    export hold `***` where the key was (the issue found it in ptst.db, samples.js and the export)."""
    from ptst.cli import main

    key = "sk-echoed-key-0123456789abcdef"
    with FakeOpenAI(responder=lambda model, messages: f"Sure. Authorization: Bearer {key}", api_key=key) as fake:
        harmful = tmp_path / "harmful.jsonl"
        harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(3)))
        spec = {"name": "echo", "backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": fake.url,
                                              **FAST}],
                "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
                "judge": {"kind": "keyword"}}
        p, out = tmp_path / "spec.yaml", tmp_path / "out"
        p.write_text(yaml.safe_dump(spec))
        monkeypatch.setenv("OPENAI_API_KEY", key)
        assert main(["run", str(p), "--out", str(out), "--yes"]) == 0
        assert main(["report", str(out), "--export", "jsonl"]) == 0
    written = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.suffix == ".jsonl" for f in written) and any(f.name == "samples.js" for f in written)
    assert [f.name for f in written if key.encode() in f.read_bytes()] == []
    assert "Bearer ***" in (out / "samples.js").read_text()

"""SIGKILL at any point loses at most the work in flight: resume gives the results of a clean run, redoes only the
responses that were generated but not yet committed, and never runs (or pays for) a finished job twice.

The mock backend counts its work in a test-only file (PTST_TEST_MOCK_CALLS); the OpenAI path is counted by the fake
server's per-route counters."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ptst.backends.mock import CALLS_FILE_ENV, STREAM_GROUP
from ptst.graph import REMOTE_GENERATION_CALLS

CMD = [sys.executable, "-m", "ptst", "run"]
N_JOBS = 6  # 2 backends × 3 train templates
TIME_FIELDS = ("started_at", "finished_at", "times")  # facts of the run, not results


def write_spec(tmp: Path, *, latency_ms: float, train_seconds: float) -> Path:
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps({"q": f"what is {i}+{i}?", "a": f"#### {2 * i}"}) + "\n" for i in range(8)))
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request number {i}"}) + "\n" for i in range(40)))
    test = tmp / "test.jsonl"
    test.write_text("".join(json.dumps({"q": f"what is {i}*2?", "a": f"#### {2 * i}"}) + "\n" for i in range(20)))
    timing = {"latency_ms": latency_ms, "train_seconds": train_seconds}
    spec = {
        "name": "kill",
        "backends": [{"kind": "mock", "model": "mock-a", "label": "mock-a", **timing},
                     {"kind": "mock", "model": "mock-b", "label": "mock-b", "drift": 0.5, **timing}],
        "train": {"dataset": {"path": str(train), "prompt_field": "q", "answer_field": "a"},
                  "templates": ["chat:vanilla", "chat:alpaca", "chat:llama"], "seeds": [0]},
        "eval": {"templates": ["chat:vanilla", "chat:alpaca", "chat:llama"],
                 "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
                 "tasks": [{"path": str(test), "prompt_field": "q", "answer_field": "a", "metric": "exact_match"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def count(out: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'ptst.db'}?mode=ro", uri=True, timeout=5) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def results(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    return {k: v for k, v in res.items() if k not in TIME_FIELDS}


def calls(path: Path) -> Counter:
    return Counter(line for line in path.read_text().splitlines()) if path.exists() else Counter()


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("clean")
    spec = write_spec(tmp, latency_ms=8.0, train_seconds=1.0)
    done = subprocess.run([*CMD, str(spec), "--out", str(tmp / "out")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return spec, results(tmp / "out")


GENERATIONS = "SELECT count(*) FROM generations"
WHEN: dict[str, Callable[[Path], bool]] = {
    # some jobs started (the ledger has them), none finished
    "train": lambda out: count(out, "SELECT count(*) FROM ledger") > 0 and count(out, "SELECT count(*) FROM jobs") == 0,
    "generate": lambda out: count(out, GENERATIONS) >= 300,
    "judge": lambda out: count(out, "SELECT count(*) FROM judgments") > 0,
}


@pytest.mark.parametrize("stage", list(WHEN))
def test_sigkill_then_resume_redoes_only_work_in_flight(tmp_path, clean, stage):
    spec, reference = clean
    out, counter = tmp_path / "out", tmp_path / "calls.txt"
    env = {**os.environ, CALLS_FILE_ENV: str(counter), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*CMD, str(spec), "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not WHEN[stage](out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run finished before it could be killed during {stage}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = calls(counter)
    committed_gen = count(out, GENERATIONS)
    committed_jobs = count(out, "SELECT count(*) FROM jobs")
    made_gen = sum(n for line, n in at_kill.items() if line.startswith("generate"))
    started_jobs = sum(n for line, n in at_kill.items() if line.startswith("train"))
    in_flight = made_gen - committed_gen  # responses made but not yet committed when the process died
    bound = REMOTE_GENERATION_CALLS * 2 * STREAM_GROUP  # concurrent calls × backends × responses per hand-over
    assert 0 <= in_flight <= bound

    done = subprocess.run([*CMD, str(spec), "--out", str(out)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert results(out) == reference  # (a) identical results
    total = calls(counter)
    gens = {line: n for line, n in total.items() if line.startswith("generate")}
    redone = sum(gens.values()) - len(gens)
    assert redone <= in_flight  # (b) only what was in flight is generated again
    assert len(gens) == count(out, GENERATIONS) == 2 * 4 * 3 * (40 + 20)
    jobs = {line: n for line, n in total.items() if line.startswith("train")}
    assert len(jobs) == N_JOBS == count(out, "SELECT count(*) FROM jobs")  # (c) no duplicated jobs:
    assert sum(jobs.values()) == N_JOBS + (started_jobs - committed_jobs)  # only unfinished ones were restarted
    print(f"\nkill during {stage}: in flight {in_flight} (bound {bound}), redone {redone}, "
          f"jobs restarted {sum(jobs.values()) - N_JOBS} (unfinished at the kill {started_jobs - committed_jobs})")


def test_openai_kill_during_training_and_generation_pays_nothing_twice(tmp_path, shared):
    from ptst.testing.fake_openai import CHAT, CREATE_JOB, UPLOAD, FakeOpenAI

    key = "sk-test-kill"
    with FakeOpenAI(stage_s=(0.2, 0.2, 1.5), file_processing_s=0.05, latency_s=0.02, api_key=key) as fake:
        harmful = tmp_path / "harmful.jsonl"
        harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(100)))
        fast = dict(poll_interval_s=0.05, max_poll_interval_s=0.1, retry_backoff_s=0.01, request_timeout_s=10.0)
        spec = {
            "name": "openai-kill", "data_dir": str(shared / "data"),
            "backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": fake.url, "concurrency": 4, **fast}],
            "train": {"dataset": {"name": "gsm8k", "split": "train", "limit": 10},
                      "templates": ["chat:vanilla", "chat:llama"], "seeds": [0]},
            "eval": {"templates": ["chat:vanilla", "chat:llama"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
                     "evaluate_base": False},
            "judge": {"kind": "keyword"},
        }
        p = tmp_path / "spec.yaml"
        p.write_text(yaml.safe_dump(spec))
        out = tmp_path / "out"
        env = {**os.environ, "OPENAI_API_KEY": key, "PYTHONUNBUFFERED": "1"}

        def kill_when(cond: Callable[[], bool]) -> None:
            proc = subprocess.Popen([*CMD, str(p), "--out", str(out), "--yes"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 120
            while not cond() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()

        # 1. killed while both jobs are training at the vendor
        kill_when(lambda: fake.count(CREATE_JOB) == 2 and count(out, "SELECT count(*) FROM jobs") == 0)
        # 2. killed in the middle of generation
        kill_when(lambda: count(out, GENERATIONS) >= 64)
        chats_at_kill = len(fake.bodies(CHAT))
        in_flight = chats_at_kill - count(out, GENERATIONS)
        done = subprocess.run([*CMD, str(p), "--out", str(out), "--yes"], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert fake.count(CREATE_JOB) == 2 and fake.count(UPLOAD) == 2  # no job created or file uploaded twice
        # a request cut off by the kill reaches the server without a whole body: it was in flight, never answered
        bodies = [json.dumps(b, sort_keys=True) for b in fake.bodies(CHAT) if isinstance(b, dict) and "messages" in b]
        redone = len(bodies) - len(set(bodies))
        assert count(out, GENERATIONS) == len(set(bodies)) == 2 * 2 * 100
        assert 0 <= redone <= in_flight
        print(f"\nopenai kill: in flight {in_flight}, redone {redone}, jobs created {fake.count(CREATE_JOB)} for 2")
        res = json.loads((out / "results.json").read_text())
        assert res["failed_jobs"] == [] and all(r["n"] == 100 for r in res["safety"])


# ----------------------------------------------------------------------------------------------------------------
# Per-response durability against the fake OpenAI server: each response and verdict is stored as it returns, so a
# kill loses at most the requests in flight — `concurrency` per backend and per judge — with several cells at once.
# ----------------------------------------------------------------------------------------------------------------
GEN_CONCURRENCY, JUDGE_CONCURRENCY = 4, 3


def _openai_spec(tmp: Path, url: str, *, n: int = 60, train: dict | None = None) -> Path:
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(n)))
    fast = dict(poll_interval_s=0.05, max_poll_interval_s=0.1, retry_backoff_s=0.01, request_timeout_s=10.0)
    spec = {
        "name": "openai-stream-kill",
        "backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": url,
                      "concurrency": GEN_CONCURRENCY, **fast}],
        "eval": {"templates": ["chat:vanilla", "chat:llama", "chat:alpaca"],
                 "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
        "judge": {"kind": "rubric", "model": "gpt-4-0613", "base_url": url, "concurrency": JUDGE_CONCURRENCY,
                  "max_tokens": 20, "retry_backoff_s": 0.01, "request_timeout_s": 10.0},
    }
    if train is not None:
        spec["train"] = train
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


# Server-side TCP states of a connection the server has not finished with: SYN_RECV, ESTABLISHED, CLOSE_WAIT.
_OPEN_STATES = {"03", "01", "08"}


def _server_connections(port: int) -> int:
    """Connections to the local server on `port` it has not closed yet, as the kernel lists them (accepted or still in
    the listen backlog): zero once every request a killed client sent has been read and answered or dropped."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        n += int(local.split(":")[1], 16) == port and state in _OPEN_STATES
    return n


def _wait_drained(fake, bound_s: float = 120.0) -> None:
    """After a kill: wait for the event "the server holds no connection of the dead process" (bounded generously),
    so what the server counts is every request the process sent."""
    deadline = time.monotonic() + bound_s
    while _server_connections(fake.port) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _server_connections(fake.port) == 0, "the fake server still holds connections of the killed run"


def _chat_requests(fake) -> tuple[list[str], list[str]]:
    """(generation request bodies, judge request bodies) the server has received, each as canonical JSON."""
    from ptst.testing.fake_openai import CHAT, is_judge_prompt

    gen, judge = [], []
    for b in fake.bodies(CHAT):
        if isinstance(b, dict) and b.get("messages"):
            text = json.dumps(b, sort_keys=True)
            (judge if is_judge_prompt(str(b["messages"][-1].get("content") or "")) else gen).append(text)
    return gen, judge


def test_openai_kills_lose_at_most_the_requests_in_flight(tmp_path):
    """Killed at five points (three while generating three cells at once, two while judging): each kill loses at most
    `concurrency` generation requests and `concurrency` judge requests, and the resumed run redoes exactly those."""
    from ptst.testing.fake_openai import FakeOpenAI

    key = "sk-test-stream-kill"
    with FakeOpenAI(latency_s=0.05, api_key=key) as fake:
        spec, out = _openai_spec(tmp_path, fake.url), tmp_path / "out"
        env = {**os.environ, "OPENAI_API_KEY": key, "PYTHONUNBUFFERED": "1"}
        points = [("generate", GENERATIONS, 12), ("generate", GENERATIONS, 70), ("generate", GENERATIONS, 130),
                  ("judge", "SELECT count(*) FROM judgments", 8), ("judge", "SELECT count(*) FROM judgments", 40)]
        lost: list[tuple[int, int]] = []
        for stage, sql, at in points:
            gen0, judge0 = (len(x) for x in _chat_requests(fake))
            committed0 = count(out, GENERATIONS), count(out, "SELECT count(*) FROM judgments")
            proc = subprocess.Popen([*CMD, str(spec), "--out", str(out), "--yes"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while count(out, sql) < at and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            assert proc.poll() is None, f"the run finished before the kill at {at} ({stage})"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _wait_drained(fake)  # requests sent just before the kill have reached the server
            gen1, judge1 = (len(x) for x in _chat_requests(fake))
            committed1 = count(out, GENERATIONS), count(out, "SELECT count(*) FROM judgments")
            # requests this run made whose answers were not stored: what the kill lost
            lost.append(((gen1 - gen0) - (committed1[0] - committed0[0]), (judge1 - judge0) - (committed1[1] - committed0[1])))
        done = subprocess.run([*CMD, str(spec), "--out", str(out), "--yes"], env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        gen, judge = _chat_requests(fake)
        redone = (len(gen) - len(set(gen)), len(judge) - len(set(judge)))
        for (stage, _, at), (lg, lj) in zip(points, lost, strict=True):
            print(f"\nkill during {stage} at {at}: lost {lg} generation requests (bound {GEN_CONCURRENCY}), "
                  f"{lj} judge requests (bound {JUDGE_CONCURRENCY})", end="")
        print(f"\nredone in all: {redone[0]} generations, {redone[1]} verdicts over {len(points)} kills; "
              f"most requests in flight at once: {fake.max_in_flight}")
        # every template's base-model reply is the fake's one refusal, so the three cells share their 60 verdicts
        assert count(out, GENERATIONS) == len(set(gen)) == 3 * 60 and len(set(judge)) == 60
        assert all(0 <= lg <= GEN_CONCURRENCY and 0 <= lj <= JUDGE_CONCURRENCY for lg, lj in lost)
        assert redone == (sum(lg for lg, _ in lost), sum(lj for _, lj in lost))  # exactly what the kills lost
        assert fake.max_in_flight <= GEN_CONCURRENCY + JUDGE_CONCURRENCY  # one bound per backend, not per cell


def test_a_kill_just_after_a_training_file_upload_does_not_upload_it_again(tmp_path, shared):
    """Aimed kills: the process dies the moment the server has received an upload, before the answer (with the file's
    id) reaches it. The re-run finds the file on the API by its content-hash name instead of uploading it again."""
    from ptst.testing.fake_openai import CREATE_JOB, UPLOAD, FakeOpenAI

    key = "sk-test-upload-kill"
    with FakeOpenAI(latency_s=0.2, stage_s=(0.05, 0.05, 0.1), api_key=key) as fake:
        train = {"dataset": {"path": str(shared / "data" / "gsm8k" / "train.jsonl"), "prompt_field": "question",
                             "answer_field": "answer", "limit": 10},
                 "templates": ["chat:vanilla", "chat:llama", "chat:alpaca"], "seeds": [0]}
        spec, out = _openai_spec(tmp_path, fake.url, n=2, train=train), tmp_path / "out"
        env = {**os.environ, "OPENAI_API_KEY": key, "PYTHONUNBUFFERED": "1"}
        aimed = 0
        for _ in range(3):
            before = fake.count(UPLOAD)
            proc = subprocess.Popen([*CMD, str(spec), "--out", str(out), "--yes"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while fake.count(UPLOAD) == before and fake.count(CREATE_JOB) < 3 and proc.poll() is None \
                    and time.time() < deadline:
                time.sleep(0.002)
            aimed += fake.count(UPLOAD) > before
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done = subprocess.run([*CMD, str(spec), "--out", str(out), "--yes"], env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        # three templates: three distinct training files. A body cut off by the kill reaches the server as a
        # request but never becomes a file, so duplicates are counted among the files the server stored.
        stored = [f for f in fake.files.values() if f["purpose"] == "fine-tune"]
        duplicates = len(stored) - len({f["filename"] for f in stored})
        print(f"\n{aimed} aimed kill(s) just after an upload: {duplicates} duplicate upload(s) "
              f"({fake.count(UPLOAD)} upload requests for 3 files)")
        assert aimed >= 1 and duplicates == 0 and fake.count(CREATE_JOB) == 3, (aimed, duplicates)

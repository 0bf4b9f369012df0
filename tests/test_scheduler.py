"""The scheduler: independent work runs at once, within each slot's bound; the runner's graph uses it so jobs train
together, a cell generates while other jobs still train, and one local device does one thing at a time.

No timings are asserted: concurrency is proven with barriers and events that could only be passed if the work
overlapped (their timeouts only bound a failing test)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from ptst.backends import mock
from ptst.cli import main
from ptst.scheduler import Claims, Scheduler, Task

WAIT_S = 20  # only reached when a test fails


def test_slots_bound_concurrency_and_follow_ups_run():
    seen, lock, active = [], threading.Lock(), {"n": 0, "peak": 0}
    gate = threading.Barrier(2, timeout=WAIT_S)

    def job(i: int):
        def work():
            with lock:
                active["n"] += 1
                active["peak"] = max(active["peak"], active["n"])
            gate.wait()  # two jobs of the slot must be in flight together
            with lock:
                active["n"] -= 1
            return [Task(f"after {i}", lambda: seen.append(i) or [], ("other",))]
        return work

    s = Scheduler({"jobs": 2})
    s.submit(Task(f"job {i}", job(i), ("jobs",)) for i in range(4))
    s.run()
    assert sorted(seen) == [0, 1, 2, 3]
    assert active["peak"] == 2 and s.peak["jobs"] == 2


def test_an_error_stops_new_work_and_is_raised():
    ran = []
    s = Scheduler({"one": 1})

    def boom():
        raise ValueError("bug")

    s.submit([Task("boom", boom, ("one",)), Task("later", lambda: ran.append(1) or [], ("one",))])
    with pytest.raises(ValueError, match="bug"):
        s.run()
    assert ran == []


def test_claims_are_exclusive():
    c = Claims()
    assert c.claim(["a", "b"]) == {"a", "b"}
    assert c.claim(["b", "c"]) == {"c"}
    c.release(["b"])
    assert c.claim(["b"]) == {"b"}


def write_spec(tmp: Path, *, templates=("chat:vanilla", "chat:alpaca", "chat:llama"), backend: dict | None = None,
               n_harmful: int = 3) -> Path:
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps({"q": f"what is {i}+{i}?", "a": f"#### {2 * i}"}) + "\n" for i in range(4)))
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(n_harmful)))
    spec = {
        "name": "sched",
        "backends": [{"kind": "mock", "model": "mock-a", **(backend or {})}],
        "train": {"dataset": {"path": str(train), "prompt_field": "q", "answer_field": "a"},
                  "templates": list(templates), "seeds": [0]},
        "eval": {"templates": ["chat:vanilla", "chat:llama"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_all_jobs_train_at_once(tmp_path, monkeypatch):
    barrier = threading.Barrier(3, timeout=WAIT_S)
    real = mock.Backend.fine_tune

    def fine_tune(self, job, ledger, workdir):
        barrier.wait()  # passes only when all three jobs are in flight together
        return real(self, job, ledger, workdir)

    monkeypatch.setattr(mock.Backend, "fine_tune", fine_tune)
    assert main(["run", str(write_spec(tmp_path)), "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["train_template"] for r in res["safety"]} == {None, "chat:vanilla", "chat:alpaca", "chat:llama"}


def test_max_concurrent_jobs_bounds_jobs(tmp_path, monkeypatch):
    lock, state = threading.Lock(), {"n": 0, "peak": 0}
    pair = threading.Barrier(2, timeout=WAIT_S)
    real = mock.Backend.fine_tune

    def fine_tune(self, job, ledger, workdir):
        with lock:
            state["n"] += 1
            state["peak"] = max(state["peak"], state["n"])
        if job.train_template != "chat:mpt":
            pair.wait()  # the first two run together; the third starts only when one of them is done
        with lock:
            state["n"] -= 1
        return real(self, job, ledger, workdir)

    monkeypatch.setattr(mock.Backend, "fine_tune", fine_tune)
    spec = write_spec(tmp_path, templates=("chat:vanilla", "chat:alpaca", "chat:mpt"), backend={"max_concurrent_jobs": 2})
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 0
    assert state["peak"] == 2


def test_a_cell_generates_while_other_jobs_still_train(tmp_path, monkeypatch):
    generated = threading.Event()
    real_ft, real_gen = mock.Backend.fine_tune, mock.Backend.generate_streaming

    def fine_tune(self, job, ledger, workdir):
        if job.train_template == "chat:alpaca":
            assert generated.wait(WAIT_S), "no fine-tuned cell generated while this job was training"
        return real_ft(self, job, ledger, workdir)

    def generate(self, model, prompts, cfg, on_response):
        if model.train_template == "chat:vanilla":
            generated.set()
        return real_gen(self, model, prompts, cfg, on_response)

    monkeypatch.setattr(mock.Backend, "fine_tune", fine_tune)
    monkeypatch.setattr(mock.Backend, "generate_streaming", generate)
    spec = write_spec(tmp_path, templates=("chat:vanilla", "chat:alpaca"))
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 0


def test_a_local_device_runs_one_thing_at_a_time(tmp_path, monkeypatch):
    lock, state = threading.Lock(), {"n": 0, "peak": 0, "calls": 0}
    real_ft, real_gen = mock.Backend.fine_tune, mock.Backend.generate_streaming

    def exclusive(fn):
        def wrapped(*a, **k):
            with lock:
                state["n"] += 1
                state["calls"] += 1
                state["peak"] = max(state["peak"], state["n"])
            try:
                threading.Event().wait(0.01)  # widen the window in which an overlap would be seen
                return fn(*a, **k)
            finally:
                with lock:
                    state["n"] -= 1
        return wrapped

    monkeypatch.setattr(mock.Backend, "resource", lambda self: "cuda:0")
    monkeypatch.setattr(mock.Backend, "fine_tune", exclusive(real_ft))
    monkeypatch.setattr(mock.Backend, "generate_streaming", exclusive(real_gen))
    assert main(["run", str(write_spec(tmp_path)), "--out", str(tmp_path / "out")]) == 0
    assert state["peak"] == 1 and state["calls"] == 3 + 4 * 2  # 3 jobs; (base + 3 models) × 2 test templates


def test_max_concurrent_jobs_is_accepted_by_every_backend_and_is_no_key():
    from ptst.backends.base import BackendSpec, create_backend
    from ptst.plan import backend_identity

    for kind in ("mock", "openai", "llama2", "mistral"):
        spec = BackendSpec(kind=kind, model="m", max_concurrent_jobs=3)
        assert spec.max_concurrent_jobs == 3 and "max_concurrent_jobs" not in spec.options
    a = create_backend(BackendSpec(kind="mock", model="m", max_concurrent_jobs=3))
    b = create_backend(BackendSpec(kind="mock", model="m"))
    assert backend_identity(a.spec, a) == backend_identity(b.spec, b)


def test_plain_progress_prints_lines_not_a_redraw_storm(monkeypatch):
    from ptst import progress

    lines: list[str] = []
    monkeypatch.setattr(progress, "log", lines.append)
    now = {"t": 100.0}
    with progress.RunProgress({"train": 2, "generate": 100, "judge": 50}, live=False, clock=lambda: now["t"], width=200,
                              ticker=False) as p:
        for _ in range(100):
            p.advance("generate")  # a hundred updates at one instant: one line
        now["t"] += progress.PLAIN_INTERVAL_S
        p.advance("train")
        p.spend("train", 1.5)
        p.spend("judge", None)
    assert len(lines) == 3  # the first update, one after the interval, and the summary at the end
    assert lines[0] == "[0s] train 0/2 spent $0.00 | generate 1/100 spent $0.00 | judge 0/50 spent $0.00"
    assert lines[1] == "[10s] train 1/2 eta 10s spent $0.00 | generate 100/100 spent $0.00 | judge 0/50 spent $0.00"
    assert lines[-1] == "[10s] train 1/2 eta 10s spent $1.50 | generate 100/100 spent $0.00 | judge 0/50 spent unpriced"

"""The run store: durable ledger, atomic chunks, one process at a time."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from ptst.errors import RunLocked
from ptst.store import JobRecord, Judged, RunStore


def _try_open(path: str, q) -> None:
    try:
        with RunStore.open(path):
            q.put("opened")
    except RunLocked as e:
        q.put(str(e))


def test_lock_refuses_another_process(tmp_path):
    with RunStore.open(tmp_path):
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_try_open, args=(str(tmp_path), q))
        p.start()
        p.join(30)
        msg = q.get(timeout=5)
    assert "another ptst process" in msg
    # released when the holder closes
    with RunStore.open(tmp_path):
        pass


def test_ledger_and_jobs_survive_reopen(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.put("openai:abc", {"job_id": "ftjob-1", "file_id": "file-1"})
        s.put_job(JobRecord("k", "openai", "gpt", "chat:vanilla", 0, "succeeded", {"model_id": "ft:x"}, None, None))
    with RunStore.open(tmp_path) as s:
        assert s.get("openai:abc") == {"job_id": "ftjob-1", "file_id": "file-1"}
        assert s.get("openai:none") is None
        assert s.ledger_entries("openai:") == [("openai:abc", {"job_id": "ftjob-1", "file_id": "file-1"})]
        assert s.job("k").model_ref == {"model_id": "ft:x"} and s.job("zz") is None


def test_chunk_writes_are_atomic(tmp_path):
    with RunStore.open(tmp_path) as s:
        with pytest.raises(RuntimeError):
            with s.transaction() as c:
                c.execute("INSERT INTO generations VALUES ('a', '{}', 'r', 0)")
                raise RuntimeError("killed mid-chunk")
        assert s.responses(["a"]) == {}
        s.put_generations([("a", "{}", "r1"), ("b", "{}", "r2")])
        assert s.responses(["a", "b", "c"]) == {"a": "r1", "b": "r2"}


def test_many_keys_lookup(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.put_generations([(f"k{i}", "{}", str(i)) for i in range(2500)])
        got = s.responses(f"k{i}" for i in range(0, 3000, 1))
        assert len(got) == 2500 and got["k2499"] == "2499"
        s.put_judgments("keyword", [("j1", Judged(True, None, None, None)), ("j2", Judged(None, None, "??", "unparsed"))])
        j = s.judgments(["j1", "j2", "j3"])
        assert j["j1"].unsafe is True and j["j2"].unsafe is None and j["j2"].error == "unparsed" and "j3" not in j

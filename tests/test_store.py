"""The run store: durable ledger, atomic chunks, one process at a time."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ptst.errors import RunLocked, StoreError, UsageError
from ptst.keys import KEY_SCHEMA
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
        with pytest.raises(RuntimeError), s.transaction() as c:
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


# -- robustness: a store that cannot be trusted is refused, never started over ------------------------------------


def test_empty_store_is_refused_with_how_to_start_over(tmp_path):
    (tmp_path / "ptst.db").write_bytes(b"")
    with pytest.raises(StoreError) as e, RunStore.open(tmp_path):
        pass
    assert "empty (0 bytes)" in str(e.value) and "delete ptst.db" in str(e.value) and e.value.exit_code == 2
    assert (tmp_path / "ptst.db").stat().st_size == 0  # left as it was


def test_corrupt_store_is_refused_with_how_to_recover(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.put_generations([(f"k{i}", "{}", "x" * 500) for i in range(200)])
    db = tmp_path / "ptst.db"
    raw = bytearray(db.read_bytes())
    raw[:100] = b"\x00" * 100  # the header is gone
    db.write_bytes(bytes(raw))
    with pytest.raises(StoreError) as e, RunStore.open(tmp_path):
        pass
    assert ".recover" in str(e.value) and "start over" in str(e.value)
    assert db.read_bytes() == bytes(raw)  # never silently replaced


def test_store_of_another_key_schema_is_refused(tmp_path):
    with RunStore.open(tmp_path) as s:
        assert s.get_meta("key_schema") == KEY_SCHEMA
        s.set_meta("key_schema", KEY_SCHEMA + 1)
    with pytest.raises(StoreError, match=f"key schema v{KEY_SCHEMA + 1}"), RunStore.open(tmp_path):
        pass


def test_a_store_from_before_versioned_keys_is_read_as_v1(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.put_generations([("k", "{}", "r")])
        s.conn.execute("DELETE FROM meta WHERE key = 'key_schema'")
    with RunStore.open(tmp_path) as s:
        assert s.get_meta("key_schema") == KEY_SCHEMA and s.responses(["k"]) == {"k": "r"}


def test_out_path_that_is_a_file_is_a_user_error(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a directory"), RunStore.open(f):
        pass


UNWRITABLE_CHECK = """
import sys
from pathlib import Path

from ptst.errors import UsageError
from ptst.store import RunStore

locked = Path(sys.argv[1])
for target, want in ((locked, "not writable"), (locked / "sub", "cannot create the output directory")):
    try:
        with RunStore.open(target):
            raise SystemExit(f"{target}: opened, though its directory is read-only")
    except UsageError as e:
        if want not in str(e):
            raise SystemExit(f"{target}: {e}") from e
"""

# Root writes through directory permissions by CAP_DAC_OVERRIDE: as root, the check runs in a child that has lost it
# (and CAP_DAC_READ_SEARCH), so it holds for a root CI too. It stays uid 0, so it can still read the interpreter.
AS_ROOT_WITHOUT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_out_path_that_is_not_writable_is_a_user_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cmd = [sys.executable, "-c", UNWRITABLE_CHECK, str(locked)]
    try:
        r = subprocess.run([*AS_ROOT_WITHOUT_OVERRIDE, *cmd] if os.geteuid() == 0 else cmd, capture_output=True,
                           text=True, timeout=300, check=False)
    finally:
        locked.chmod(0o700)
    assert r.returncode == 0, r.stderr


def test_replacing_the_cell_index_is_one_transaction(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.replace_cells([("c1", {"kind": "safety"}, 1, [("g1", "q1", None)])])
        bad = [("c2", {"kind": "safety"}, 1, [("g2", "q2", None)]), ("c2", {"kind": "task"}, 2, [])]  # duplicate key
        with pytest.raises(sqlite3.IntegrityError):
            s.replace_cells(bad)
        assert [k for k, _ in s.cells()] == ["c1"] and s.cell_items("c1") == [("g1", "q1", None)]


class FullDisk(sqlite3.Connection):
    """A connection whose writes of responses fail as on a full disk, after the first `ok` of them."""

    ok = 2
    seen = 0

    def executemany(self, sql, rows):  # type: ignore[override]
        if "INTO generations" in sql:
            FullDisk.seen += 1
            if FullDisk.seen > FullDisk.ok:
                raise sqlite3.OperationalError("database or disk is full")
        return super().executemany(sql, rows)


def test_full_disk_ends_cleanly_and_the_store_still_opens(tmp_path, monkeypatch, capsys):
    import json

    from ptst.cli import main
    from ptst.store import files as store_mod

    spec = _mock_spec(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr(store_mod, "connect", lambda p: sqlite3.connect(
        p, timeout=30, isolation_level=None, check_same_thread=False, factory=FullDisk))
    FullDisk.seen = 0
    assert main(["run", str(spec), "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "database or disk is full" in errors[0] and "run the same command again" in errors[0]
    monkeypatch.undo()
    with RunStore.open(out) as s:  # intact: the committed chunks are there, the failed one is not half-written
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = s.conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    assert 0 < n < 2 * 3 * 10
    assert main(["run", str(spec), "--out", str(out)]) == 0
    clean = tmp_path / "clean"
    assert main(["run", str(spec), "--out", str(clean)]) == 0
    assert json.loads((out / "results.json").read_text())["safety"] == json.loads(
        (clean / "results.json").read_text())["safety"]


def _mock_spec(tmp: Path) -> Path:
    import json

    import yaml

    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps({"q": f"{i}+{i}?", "a": f"#### {2 * i}"}) + "\n" for i in range(4)))
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(10)))
    spec = {
        "name": "store", "backends": [{"kind": "mock", "model": "mock-a", "max_concurrent_jobs": 1}],
        "train": {"dataset": {"path": str(train), "prompt_field": "q", "answer_field": "a"},
                  "templates": ["chat:vanilla", "chat:llama"], "seeds": [0]},
        "eval": {"templates": ["chat:vanilla", "chat:llama"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_a_large_lookup_scans_the_table_with_the_same_answer(tmp_path, monkeypatch):
    from ptst.store import responses as store_mod

    with RunStore.open(tmp_path) as s:
        s.put_generations([(f"g{i}", "{}", f"response {i}") for i in range(50)])
        s.put_judgments("keyword", [(f"j{i}", Judged(i % 2 == 0, None, None, None)) for i in range(50)])
        wanted = [f"g{i}" for i in range(0, 60, 3)]  # g51.. are not stored
        indexed = (s.responses(wanted), s.have_responses(wanted), s.judgments(["j1", "j2", "nope"]))
        monkeypatch.setattr(store_mod, "SCAN_ABOVE", 0)
        scanned = (s.responses(wanted), s.have_responses(wanted), s.judgments(["j1", "j2", "nope"]))
    assert scanned == indexed
    assert indexed[0] == {f"g{i}": f"response {i}" for i in range(0, 50, 3)} and set(indexed[2]) == {"j1", "j2"}


def _damage_pages(db, first: int = 4, n: int = 8) -> None:
    raw = bytearray(db.read_bytes())
    page = 4096
    raw[first * page : (first + n) * page] = b"\xff" * (n * page)  # b-tree pages past the header, overwritten
    db.write_bytes(bytes(raw))


def test_a_cleanly_closed_store_skips_the_scan_and_damage_still_meets_a_clear_error(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.put_generations([(f"k{i}", "{}", "x" * 500) for i in range(400)])
    db = tmp_path / "ptst.db"
    with sqlite3.connect(db) as c:  # the writer's mark: the next open need not read the whole file
        assert c.execute("SELECT value FROM meta WHERE key = 'closed_cleanly'").fetchone() == ("true",)
    _damage_pages(db)
    with pytest.raises(StoreError) as e, RunStore.open(tmp_path, lock=False) as s:
        s.responses(f"k{i}" for i in range(400))  # the first read that meets the damage (at open, or here)
    assert "unreadable" in str(e.value) and ".recover" in str(e.value)


def test_a_store_its_writer_did_not_close_is_scanned_at_open(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.put_generations([(f"k{i}", "{}", "x" * 500) for i in range(400)])
    db = tmp_path / "ptst.db"
    with sqlite3.connect(db) as c:  # as a killed run leaves it
        c.execute("DELETE FROM meta WHERE key = 'closed_cleanly'")
    _damage_pages(db)
    with pytest.raises(StoreError, match="unreadable"), RunStore.open(tmp_path):
        pass

"""A damaged, edited or locked run store: a clear one-line error with exit 2 and recovery advice, never a traceback,
never silently buying committed work again; the WAL is checkpointed as the run goes so a lost -wal costs little."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_store import _mock_spec

from ptst.cli import main
from ptst.errors import RunLocked
from ptst.store import Judged, RunStore
from ptst.store import files as store_files
from ptst.store import integrity as store_integrity
from ptst.store import lock as store_lock


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _sql(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as c:
        for s in statements:
            c.execute(s)


def _rows(db: Path, table: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_dropped_generations_table_is_refused_not_bought_again(tmp_path, capsys):
    spec, out = _mock_spec(tmp_path), tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    n = _rows(out / "ptst.db", "generations")
    assert n == 3 * 2 * 10  # base + 2 models, 2 templates, 10 prompts
    _sql(out / "ptst.db", "DROP TABLE generations")
    capsys.readouterr()
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert f"lost committed work ({n} of {n} generations rows are gone" in err
    assert ".recover" in err and "DELETE FROM meta WHERE key = 'committed'" in err
    assert _rows(out / "ptst.db", "generations") == 0  # nothing was bought again
    # the advice, followed: the loss is accepted and the work redone
    _sql(out / "ptst.db", "DELETE FROM meta WHERE key = 'committed'")
    assert main(["run", str(spec), "--out", str(out)]) == 0
    assert _rows(out / "ptst.db", "generations") == n


def test_the_wal_is_checkpointed_as_the_run_goes(tmp_path, monkeypatch):
    """ptst.db alone (its -wal lost) holds everything written up to the last checkpoint: with checkpoints every
    write, all of it; without them, SQLite leaves small writes in the -wal only (what the issue's run lost)."""
    rows = [(f"g{i}", "{}", "response") for i in range(50)]

    def written_then_wal_lost(where: Path) -> int:
        with RunStore.open(where) as s:
            for i in range(0, 50, 5):
                s.put_generations(rows[i : i + 5])
            copy = where.parent / (where.name + "-copy")
            copy.mkdir()
            shutil.copy(where / "ptst.db", copy / "ptst.db")  # as if killed now and the -wal deleted
        return _rows(copy / "ptst.db", "generations")

    monkeypatch.setattr(store_integrity, "CHECKPOINT_S", 3600.0)
    assert written_then_wal_lost(tmp_path / "rare") == 0
    monkeypatch.setattr(store_integrity, "CHECKPOINT_S", 0.0)
    assert written_then_wal_lost(tmp_path / "often") == 50


def test_a_finished_run_leaves_nothing_in_the_wal(tmp_path):
    spec, out = _mock_spec(tmp_path), tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    with_wal = {t: _rows(out / "ptst.db", t) for t in ("generations", "judgments", "jobs", "ledger")}
    shutil.copy(out / "ptst.db", tmp_path / "alone.db")  # the -wal left behind
    assert {t: _rows(tmp_path / "alone.db", t) for t in with_wal} == with_wal and with_wal["generations"] == 60


@pytest.mark.parametrize("value", ["{not json", "v1"])
def test_a_garbage_key_schema_is_a_clean_error(tmp_path, capsys, value):
    spec, out = _mock_spec(tmp_path), tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    _sql(out / "ptst.db", f"UPDATE meta SET value = '{value}' WHERE key = 'key_schema'")
    capsys.readouterr()
    assert main(["run", str(spec), "--out", str(out)]) == 2
    [err] = _errors(capsys)
    assert "meta.key_schema is not valid JSON" in err and "backup" in err
    assert main(["report", str(out)]) == 2


def test_a_garbage_model_ref_is_a_clean_error_and_the_advice_works(tmp_path, capsys):
    spec, out = _mock_spec(tmp_path), tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    with sqlite3.connect(out / "ptst.db") as c:
        key = c.execute("SELECT key FROM jobs ORDER BY key LIMIT 1").fetchone()[0]
    for garbage in ("'nonsense'", "'{\"model_id\": 3}'"):
        _sql(out / "ptst.db", f"UPDATE jobs SET model_ref = {garbage} WHERE key = '{key}'")
        capsys.readouterr()
        assert main(["run", str(spec), "--out", str(out)]) == 2
        [err] = _errors(capsys)
        assert f"jobs row {key}: model_ref is" in err and "UPDATE jobs SET status = 'error'" in err
    _sql(out / "ptst.db", f"UPDATE jobs SET status = 'error', model_ref = NULL WHERE key = '{key}'")
    assert main(["run", str(spec), "--out", str(out)]) == 0  # the job is found again (mock: from its ledger entry)


def _hold_write_lock(db: Path, seconds: float, started: threading.Event) -> None:
    c = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    c.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(seconds)
    c.execute("ROLLBACK")
    c.close()


def test_a_store_locked_by_another_process_at_start_is_exit_2(tmp_path, capsys, monkeypatch):
    spec, out = _mock_spec(tmp_path), tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 0
    monkeypatch.setattr(store_files, "BUSY_TIMEOUT_S", 0.3)
    started = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(out / "ptst.db", 3.0, started))
    holder.start()
    started.wait(5)
    capsys.readouterr()
    try:
        assert main(["run", str(spec), "--out", str(out)]) == 2
    finally:
        holder.join()
    [err] = _errors(capsys)
    assert "another process has held a lock on the run store for more than 0.3 s" in err
    assert "everything committed before is kept" in err


def test_a_store_locked_mid_run_is_exit_2_and_the_work_is_kept(tmp_path, capsys, monkeypatch):
    spec, out = _mock_spec(tmp_path), tmp_path / "out"
    monkeypatch.setattr(store_files, "BUSY_TIMEOUT_S", 0.3)
    real, holders = RunStore.put_generations, []

    def put_generations(self, rows):  # once the first responses are stored, another process takes the lock
        real(self, rows)
        if not holders:
            started = threading.Event()
            holders.append(threading.Thread(target=_hold_write_lock, args=(out / "ptst.db", 2.0, started)))
            holders[0].start()
            started.wait(5)

    monkeypatch.setattr(RunStore, "put_generations", put_generations)
    try:
        assert main(["run", str(spec), "--out", str(out)]) == 2
    finally:
        for h in holders:
            h.join()
    [err] = _errors(capsys)
    assert "another process has held a lock" in err
    monkeypatch.undo()
    kept = _rows(out / "ptst.db", "generations")
    assert kept >= 1  # what was stored before the lock is still there
    assert main(["run", str(spec), "--out", str(out)]) == 0
    assert _rows(out / "ptst.db", "generations") == 60


HOLDER = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.4)  # the pid is written only now: a reader in between saw an empty file ("pid ?")
os.pwrite(f.fileno(), str(os.getpid()).encode(), 0)
time.sleep(5)
"""


def test_the_lock_holders_pid_is_read_even_while_it_is_being_written(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "ptst.lock")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked) as e, RunStore.open(tmp_path):
            pass
        assert f"(pid {proc.pid})" in str(e.value)
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_file_holds_the_pid_whole(tmp_path):
    import os

    with RunStore.open(tmp_path):
        text = (tmp_path / "ptst.lock").read_text()
    assert text.strip() == str(os.getpid()) and len(text) == store_lock.PID_WIDTH


def test_verdicts_are_counted_in_the_committed_meta(tmp_path):
    with RunStore.open(tmp_path) as s:
        s.put_generations([("g1", "{}", "r")])
        s.put_judgments("keyword", [("j1", Judged(True, None, None, None))])
    with RunStore.open(tmp_path) as s:
        assert s.get_meta("committed") == {"jobs": 0, "ledger": 0, "generations": 1, "judgments": 1}

"""The run store: one SQLite file (WAL) per output directory, holding every result the moment it exists.

Every step is keyed by a content hash of what determines its result, so a re-run skips what is done, a killed run
resumes where it stopped, and an external job (an OpenAI fine-tune) recorded in the ledger is found again instead of
being paid for twice. One process at a time: an exclusive lock on `DIR/ptst.lock` refuses a second.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptst.errors import RunLocked

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  key TEXT PRIMARY KEY, backend TEXT NOT NULL, base_model TEXT NOT NULL, train_template TEXT NOT NULL,
  seed INTEGER NOT NULL, status TEXT NOT NULL, model_ref TEXT, code TEXT, message TEXT, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, spec TEXT NOT NULL, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cell_items (
  cell TEXT NOT NULL, idx INTEGER NOT NULL, gen_key TEXT NOT NULL, query TEXT NOT NULL, reference TEXT,
  PRIMARY KEY (cell, idx));
CREATE TABLE IF NOT EXISTS generations (
  key TEXT PRIMARY KEY, prompt TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS judgments (
  key TEXT PRIMARY KEY, judge TEXT NOT NULL, unsafe INTEGER, score INTEGER, raw TEXT, error TEXT,
  created REAL NOT NULL);
"""


@dataclass(frozen=True)
class JobRecord:
    key: str
    backend: str
    base_model: str
    train_template: str
    seed: int
    status: str  # "succeeded" | "failed" | "cancelled" | "error"
    model_ref: dict[str, Any] | None
    code: str | None
    message: str | None


class RunStore:
    """Open with `RunStore.open(dir)` (a context manager that holds the directory lock)."""

    def __init__(self, directory: Path, conn: sqlite3.Connection):
        self.directory = directory
        self.conn = conn

    @classmethod
    @contextmanager
    def open(cls, directory: str | Path, *, lock: bool = True) -> Iterator[RunStore]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lock_file = None
        if lock:
            lock_file = open(d / "ptst.lock", "a+")  # noqa: SIM115 - held for the whole run
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.seek(0)
                holder = lock_file.read().strip() or "?"
                lock_file.close()
                raise RunLocked(
                    f"{d}: another ptst process (pid {holder}) is using this directory; "
                    "wait for it to finish or choose another --out"
                ) from None
            lock_file.seek(0)
            lock_file.truncate()
            lock_file.write(str(os.getpid()))
            lock_file.flush()
        conn = sqlite3.connect(d / "ptst.db", timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            yield cls(d, conn)
        finally:
            conn.close()
            if lock_file is not None:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
                lock_file.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- meta -------------------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- ledger (JobLedger protocol) --------------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT value FROM ledger WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO ledger VALUES (?, ?, ?)", (name, json.dumps(value, sort_keys=True), time.time())
        )

    def ledger_entries(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        rows = self.conn.execute("SELECT name, value FROM ledger WHERE name LIKE ? ORDER BY name", (prefix + "%",))
        return [(n, json.loads(v)) for n, v in rows]

    # -- fine-tuning jobs ---------------------------------------------------------------------------------------
    def job(self, key: str) -> JobRecord | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _job(row) if row else None

    def jobs(self) -> list[JobRecord]:
        return [_job(r) for r in self.conn.execute("SELECT * FROM jobs ORDER BY rowid")]

    def put_job(self, rec: JobRecord) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.key, rec.backend, rec.base_model, rec.train_template, rec.seed, rec.status,
                json.dumps(rec.model_ref) if rec.model_ref is not None else None, rec.code, rec.message, time.time(),
            ),
        )

    # -- evaluation cells -----------------------------------------------------------------------------------------
    def put_cell(self, key: str, spec: dict[str, Any], position: int, items: Sequence[tuple[str, str, str | None]]) -> None:
        """Record a cell (one model × test template × benchmark) and its items (gen_key, query, reference)."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?)", (key, json.dumps(spec, sort_keys=True), position))
            c.execute("DELETE FROM cell_items WHERE cell = ?", (key,))
            c.executemany(
                "INSERT INTO cell_items VALUES (?, ?, ?, ?, ?)",
                [(key, i, g, q, r) for i, (g, q, r) in enumerate(items)],
            )

    def cells(self) -> list[tuple[str, dict[str, Any]]]:
        return [(k, json.loads(s)) for k, s in self.conn.execute("SELECT key, spec FROM cells ORDER BY position, key")]

    def cell_items(self, cell: str) -> list[tuple[str, str, str | None]]:
        """(gen_key, query, reference) of a cell, in order."""
        q = "SELECT gen_key, query, reference FROM cell_items WHERE cell = ? ORDER BY idx"
        return list(self.conn.execute(q, (cell,)))

    # -- generations and judgments --------------------------------------------------------------------------------
    def _lookup(self, sql: str, keys: Iterable[str]) -> list[tuple[Any, ...]]:
        keys = list(dict.fromkeys(keys))
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(keys), 900):  # stay under SQLite's bound-parameter limit
            chunk = keys[i : i + 900]
            out.extend(self.conn.execute(sql % ",".join("?" * len(chunk)), chunk))
        return out

    def responses(self, keys: Iterable[str]) -> dict[str, str]:
        return dict(self._lookup("SELECT key, response FROM generations WHERE key IN (%s)", keys))

    def prompts(self, keys: Iterable[str]) -> dict[str, str]:
        return dict(self._lookup("SELECT key, prompt FROM generations WHERE key IN (%s)", keys))

    def put_generations(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """rows: (gen_key, rendered_prompt_json, response), written in one transaction."""
        now = time.time()
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)", [(*r, now) for r in rows])

    def judgments(self, keys: Iterable[str]) -> dict[str, Judged]:
        rows = self._lookup("SELECT key, unsafe, score, raw, error FROM judgments WHERE key IN (%s)", keys)
        return {k: Judged(None if u is None else bool(u), s, raw, err) for k, u, s, raw, err in rows}

    def put_judgments(self, judge: str, rows: Sequence[tuple[str, Judged]]) -> None:
        """rows: (judgment_key, verdict), written in one transaction."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (k, judge, None if j.unsafe is None else int(j.unsafe), j.score, j.raw, j.error, now)
                    for k, j in rows
                ],
            )


@dataclass(frozen=True)
class Judged:
    unsafe: bool | None
    score: int | None
    raw: str | None
    error: str | None


def _job(row: tuple[Any, ...]) -> JobRecord:
    key, backend, base_model, tt, seed, status, ref, code, message, _ = row
    return JobRecord(key, backend, base_model, tt, seed, status, json.loads(ref) if ref else None, code, message)

"""The run store's file: its schema, how it is created whole, and how it is opened (writable or read-only).

A `ptst.db` is never seen half-made (it is built under a temporary name and renamed into place), never created by a
reader, and a store that cannot be opened is a one-line error saying what can be recovered.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from ptst.errors import StoreError, UsageError
from ptst.keys import KEY_SCHEMA

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  key TEXT PRIMARY KEY, backend TEXT NOT NULL, base_model TEXT NOT NULL, train_template TEXT NOT NULL,
  seed INTEGER NOT NULL, status TEXT NOT NULL, model_ref TEXT, code TEXT, message TEXT, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, spec TEXT NOT NULL, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cell_items (
  cell TEXT NOT NULL, idx INTEGER NOT NULL, gen_key TEXT NOT NULL, query TEXT NOT NULL, reference TEXT,
  category TEXT, PRIMARY KEY (cell, idx));
CREATE TABLE IF NOT EXISTS generations (
  key TEXT PRIMARY KEY, prompt TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS judgments (
  key TEXT PRIMARY KEY, judge TEXT NOT NULL, unsafe INTEGER, score INTEGER, raw TEXT, error TEXT,
  created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS costs (key TEXT PRIMARY KEY, stage TEXT NOT NULL, usd REAL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS failures (
  key TEXT PRIMARY KEY, stage TEXT NOT NULL, what TEXT NOT NULL, message TEXT NOT NULL, updated REAL NOT NULL);
"""

TABLES = ("meta", "ledger", "jobs", "cells", "cell_items", "generations", "judgments", "costs", "failures")

# How long a write waits for another process's write lock (a `sqlite3` shell with an open transaction) before the
# run stops with exit 2; committed work is kept either way.
BUSY_TIMEOUT_S = 30.0


def connect(path: Path) -> sqlite3.Connection:
    """One connection shared by the scheduler's threads (every use is under the store's lock). `mode=rw`: never
    creates the file (a reader must not leave an empty store behind; `create` makes new ones whole)."""
    return sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A reader's connection to a store in a folder it cannot write (`ptst report DIR --out OTHER` on a read-only
    copy). SQLite's WAL mode needs a writable `-shm` beside the file even to read, so a store with nothing left in its
    write-ahead log is opened as immutable; one whose log still holds committed rows cannot be read without it."""
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreError(
            f"{path.parent}: this folder is read-only and the run store's write-ahead log ({wal.name}) still holds "
            f"committed results that only a writable folder can read; copy the folder (cp -r {path.parent} COPY) and "
            "run `ptst report COPY`"
        )
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None,
                           check_same_thread=False)


def create(db: Path) -> None:
    """Make a new store under a temporary name and rename it into place, so `ptst.db` is never seen half-made
    (a zero-length `ptst.db` is therefore never ours, and is refused)."""
    tmp = db.with_name(db.name + ".new")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('key_schema', ?)", (json.dumps(KEY_SCHEMA),))
    finally:
        conn.close()
    os.replace(tmp, db)


def prepare_dir(d: Path) -> None:
    """An --out that is a file, or a folder we cannot write, is a user error named in one line."""
    if d.exists() and not d.is_dir():
        raise UsageError(f"{d}: is a file, not a directory; give --out a directory (new or a previous run's)")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{d}: cannot create the output directory ({e.strerror}); choose another --out") from e
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"{d}: the output directory is not writable; fix its permissions or choose another --out")


def check_file(db: Path) -> None:
    if db.exists() and db.stat().st_size == 0:
        raise StoreError(
            f"{db}: the run store is empty (0 bytes), so nothing in it can be recovered (files under "
            f"{db.parent / 'models'} are kept); delete {db.name} to start this run over, or choose another --out"
        )


def corrupt(db: Path, why: str) -> StoreError:
    return StoreError(
        f"{db}: the run store is unreadable ({why}); copy out what survives with `sqlite3 {db} .recover > "
        f"recovered.sql`, then move {db.name} away to start over (or choose another --out)"
    )

"""The run store: one SQLite file (WAL) per output directory, holding every result the moment it exists.

Every step is keyed by a content hash of what determines its result (ptst.keys, schema recorded in meta), so a
re-run skips what is done, a killed run resumes where it stopped, and an external job (an OpenAI fine-tune) recorded
in the ledger is found again instead of being paid for twice. One process at a time: an exclusive lock on
`DIR/ptst.lock` refuses a second. Within the process the scheduler's worker threads share one connection guarded by a
lock, and every write is one transaction, so a kill loses at most the work in flight and never half a chunk.
A store that cannot be trusted (empty, corrupt, another key schema) is refused, never silently started over.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptst.errors import RunLocked, StoreError, UsageError
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

# An item: (gen_key, query, reference) or (gen_key, query, reference, category).
Item = tuple[str, str, str | None] | tuple[str, str, str | None, str | None]
CellRow = tuple[str, dict[str, Any], int, Sequence[Item]]  # key, spec, position, items
_INSERT_ITEM = "INSERT INTO cell_items (cell, idx, gen_key, query, reference, category) VALUES (?, ?, ?, ?, ?, ?)"


def _item_rows(key: str, items: Sequence[Item]) -> list[tuple[Any, ...]]:
    return [(key, i, it[0], it[1], it[2], it[3] if len(it) > 3 else None) for i, it in enumerate(items)]  # type: ignore[misc]


# How long a write waits for another process's write lock (a `sqlite3` shell with an open transaction) before the
# run stops with exit 2; committed work is kept either way.
BUSY_TIMEOUT_S = 30.0
# How often the WAL is copied into ptst.db as the run goes: a lost or damaged ptst.db-wal then costs at most the work
# of the last few seconds, never the whole run. The committed counts are recorded at the same moments.
CHECKPOINT_S = 2.0
COUNTED = ("jobs", "ledger", "generations", "judgments")  # the tables whose rows are paid work
SCAN_ABOVE = 20_000  # keys looked up at once above which a table scan beats indexed IN lists
SCAN_FROM = 2_000  # from this many keys, a scan also wins when they are a third of the table or more
# How `RunStore.stamp` sees each table: "*" a digest of every row (the small tables, where a hand edit in place
# matters: a job's model_ref, a ledger entry), else the row count and the latest value of the column that says when a
# row was written (None: count only) for the tables that grow with the responses.
STAMPED = {"jobs": "*", "ledger": "*", "cells": "*", "failures": "*", "cell_items": None, "generations": "created",
           "judgments": "created", "costs": "updated"}
# meta entries that every run (or close) rewrites without changing what the results are made from
VOLATILE_META = ("finished_at", "finished_plan", "committed", "closed_cleanly")


def _connect(path: Path) -> sqlite3.Connection:
    """One connection shared by the scheduler's threads (every use is under the store's lock). `mode=rw`: never
    creates the file (a reader must not leave an empty store behind; `_create` makes new ones whole)."""
    return sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)


def _connect_read_only(path: Path) -> sqlite3.Connection:
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


def _create(db: Path) -> None:
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


def _prepare_dir(d: Path) -> None:
    """An --out that is a file, or a folder we cannot write, is a user error named in one line."""
    if d.exists() and not d.is_dir():
        raise UsageError(f"{d}: is a file, not a directory; give --out a directory (new or a previous run's)")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{d}: cannot create the output directory ({e.strerror}); choose another --out") from e
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"{d}: the output directory is not writable; fix its permissions or choose another --out")


def _check_file(db: Path) -> None:
    if db.exists() and db.stat().st_size == 0:
        raise StoreError(
            f"{db}: the run store is empty (0 bytes), so nothing in it can be recovered (files under "
            f"{db.parent / 'models'} are kept); delete {db.name} to start this run over, or choose another --out"
        )


def _corrupt(db: Path, why: str) -> StoreError:
    return StoreError(
        f"{db}: the run store is unreadable ({why}); copy out what survives with `sqlite3 {db} .recover > "
        f"recovered.sql`, then move {db.name} away to start over (or choose another --out)"
    )


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
        self.lock = threading.RLock()
        self._writable = False
        self._checkpointed = time.monotonic()

    @classmethod
    @contextmanager
    def open(cls, directory: str | Path, *, lock: bool = True) -> Iterator[RunStore]:
        d = Path(directory)
        if lock:
            _prepare_dir(d)
        elif not d.is_dir():  # a reader (`ptst report DIR`) writes nothing here: DIR may be read-only
            raise UsageError(f"{d}: no run store (ptst.db) here; give the --out directory of a `ptst run`")
        lock_file = _acquire(d) if lock else None
        try:
            db = d / "ptst.db"
            _check_file(db)
            if not db.exists():
                if not lock:
                    raise UsageError(f"{d}: no run store (ptst.db) here; give the --out directory of a `ptst run`")
                try:
                    _create(db)
                except sqlite3.Error as e:
                    raise StoreError(f"{db}: cannot create the run store ({e}); free some space or choose another --out") from e
            try:
                conn = _connect(db) if lock or os.access(d, os.W_OK) else _connect_read_only(db)
            except sqlite3.Error as e:
                raise _corrupt(db, str(e)) from e
            store = cls(d, conn)
            try:
                store._init(writable=lock)
                yield store
                if lock:
                    store.set_meta("closed_cleanly", True)  # the next open may skip the integrity scan
                    store.checkpoint()  # a finished command leaves everything in ptst.db itself
            finally:
                with store.lock:
                    conn.close()
        finally:
            if lock_file is not None:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
                lock_file.close()

    def _init(self, *, writable: bool) -> None:
        db = self.directory / "ptst.db"
        # The integrity scan reads the whole file (a second per few hundred MB): it runs when the last writer did
        # not close the store (a kill, a crash, a run still going), and damage done while it was closed surfaces as
        # the same one-line error from the first read that meets it (`_writing`).
        try:
            check = ("ok",) if self._closed_cleanly() else self.conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            raise _corrupt(db, str(e)) from e
        if check is None or check[0] != "ok":
            raise _corrupt(db, f"integrity check: {check[0] if check else 'no answer'}")
        with self._writing():
            if writable:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.executescript(SCHEMA)
                if not self._has_category():  # a store made before per-category rows: the column is added
                    self.conn.execute("ALTER TABLE cell_items ADD COLUMN category TEXT")
        if writable:
            with self._writing():  # until this writer closes it, the next opener scans it
                self.conn.execute("DELETE FROM meta WHERE key = 'closed_cleanly'")
        self._writable = writable
        has_meta = self._read("SELECT 1 FROM sqlite_master WHERE name = 'meta'")
        schema = self.get_meta("key_schema") if has_meta else None
        if schema is not None and schema != KEY_SCHEMA:
            raise StoreError(
                f"{db}: this run store was written with key schema v{schema}, and this ptst reads v{KEY_SCHEMA}; "
                "open it with the ptst version that wrote it, or choose another --out to start over"
            )
        if schema is None and writable:
            # A store without the field predates versioned keys: its keys are v1 by construction (pinned by the
            # golden-key tests), so it is read as is.
            self.set_meta("key_schema", KEY_SCHEMA)
        if writable:
            self._check_counts()

    def _closed_cleanly(self) -> bool:
        """Whether the last writer closed the store (its mark is removed while a writer has it open)."""
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            return False
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'closed_cleanly'").fetchone()
        return row == ("true",)

    # -- committed work: checkpoints and the counts that detect its loss ------------------------------------------
    def _counts(self) -> dict[str, int]:
        return {t: self._read(f"SELECT count(*) FROM {t}")[0][0] for t in COUNTED}

    def _check_counts(self) -> None:
        """Refuse a store holding fewer rows than it recorded as committed (a dropped table, a ptst.db copied without
        its -wal file, a damaged WAL): a run on it would buy the missing work again without a word."""
        recorded = self.get_meta("committed")
        if not isinstance(recorded, dict):
            return
        have = self._counts()
        lost = {t: int(n) - have[t] for t, n in recorded.items() if t in have and isinstance(n, int) and have[t] < n}
        if not lost:
            return
        db = self.directory / "ptst.db"
        what = ", ".join(f"{n:,} of {recorded[t]:,} {t} rows" for t, n in lost.items())
        raise StoreError(
            f"{db}: the run store lost committed work ({what} are gone: a dropped table, a deleted or damaged "
            f"{db.name}-wal?); a run here would buy them again. Put back the missing {db.name}-wal or a backup of "
            f"the folder if you have one (`sqlite3 {db} .recover` also finds rows of dropped tables); to redo the "
            f"lost work anyway, paying again, run `sqlite3 {db} \"DELETE FROM meta WHERE key = 'committed'\"` and "
            "run the same command again"
        )

    def checkpoint(self) -> None:
        """Record the committed counts and copy the WAL into ptst.db (without waiting for readers): from here on,
        losing the -wal file loses nothing before this moment. Called every CHECKPOINT_S by writes, and at close."""
        with self.lock:
            self._checkpointed = time.monotonic()
            with self._writing():
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('committed', ?)", (json.dumps(self._counts()),))
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _maybe_checkpoint(self) -> None:
        if self._writable and time.monotonic() - self._checkpointed >= CHECKPOINT_S:
            self.checkpoint()

    def _has_category(self) -> bool:
        with self.lock:
            return any(r[1] == "category" for r in self.conn.execute("PRAGMA table_info(cell_items)").fetchall())

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Map SQLite's write failures to one-line errors; a failed write leaves every committed row intact."""
        try:
            yield
        except sqlite3.OperationalError as e:
            msg = str(e)
            if "database is locked" in msg or "database table is locked" in msg:
                raise StoreError(
                    f"{self.directory / 'ptst.db'}: another process has held a lock on the run store for more than "
                    f"{BUSY_TIMEOUT_S:g} s (a `sqlite3` shell or database browser with an open transaction?); close it "
                    "and run the same command again — everything committed before is kept"
                ) from e
            if "disk is full" in msg or "disk I/O error" in msg:
                raise StoreError(
                    f"{self.directory / 'ptst.db'}: {msg} — everything committed before is kept; free some space "
                    "and run the same command again to resume"
                ) from e
            raise
        except sqlite3.DatabaseError as e:
            if type(e) is sqlite3.DatabaseError:  # "database disk image is malformed": damage met by a read or write
                raise _corrupt(self.directory / "ptst.db", str(e)) from e
            raise  # a constraint or programming error: a bug, with its traceback

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock, self._writing():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _write(self, sql: str, params: Sequence[Any]) -> None:
        with self.lock, self._writing():
            self.conn.execute(sql, params)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock, self._writing():
            return self.conn.execute(sql, params).fetchall()

    # -- meta -------------------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except (TypeError, ValueError) as e:
            db = self.directory / "ptst.db"
            raise StoreError(
                f"{db}: meta.{key} is not valid JSON ({str(rows[0][0])[:40]!r}): the store was edited or damaged; "
                f"restore the folder from a backup, or copy out what survives with `sqlite3 {db} .recover > "
                "recovered.sql` and choose another --out"
            ) from e

    # -- what the results are made from, and the results of a finished plan -------------------------------------
    def stamp(self) -> dict[str, list]:
        """What the results are made from, cheaply: every row of the small tables and the meta entries (less the
        volatile ones) as digests, and count and latest write time of the large ones. Any new, replaced or deleted row
        moves it; so does any edit of a job, ledger entry, cell or failure. A generation or verdict edited in place by
        hand keeps its write time: `ptst report DIR` rebuilds from the rows themselves."""
        out: dict[str, list] = {}
        with self.lock:
            for table, col in STAMPED.items():
                if col == "*":
                    rows = self.conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                    out[table] = [len(rows), hashlib.sha256(repr(rows).encode("utf-8", "surrogatepass")).hexdigest()]
                    continue
                agg = f"count(*), max({col})" if col else "count(*), NULL"
                out[table] = list(self.conn.execute(f"SELECT {agg} FROM {table}").fetchone())
            marks = ",".join("?" * len(VOLATILE_META))
            meta = self.conn.execute(f"SELECT key, value FROM meta WHERE key NOT IN ({marks}) ORDER BY key",
                                     VOLATILE_META).fetchall()
        out["meta"] = [hashlib.sha256(json.dumps(meta).encode("utf-8", "surrogatepass")).hexdigest()]
        return out

    def record_finished(self, plan: str, status: str, results: Any) -> None:
        """Keep the results of a run that finished its whole plan, with the store's stamp at that moment: a re-run of
        the same plan on an unchanged store (`finished_results`) then reads them instead of re-deriving every key."""
        self.set_meta("finished_plan", {"plan": plan, "status": status, "stamp": self.stamp(), "results": results})

    def finished_results(self, plan: str) -> tuple[str, Any] | None:
        """(status, results) recorded by `record_finished` for `plan`, if nothing in the store changed since; else
        None (another plan, or any row written, replaced or deleted since)."""
        rec = self.get_meta("finished_plan")
        if not isinstance(rec, dict) or rec.get("plan") != plan or rec.get("stamp") != self.stamp():
            return None
        status, results = rec.get("status"), rec.get("results")
        return (status, results) if isinstance(status, str) and isinstance(results, dict) else None

    # -- ledger (JobLedger protocol) --------------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any] | None:
        rows = self._read("SELECT value FROM ledger WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?)", (name, json.dumps(value, sort_keys=True), time.time()))
        self._maybe_checkpoint()

    def ledger_entries(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        rows = self._read("SELECT name, value FROM ledger WHERE name LIKE ? ORDER BY name", (prefix + "%",))
        return [(n, json.loads(v)) for n, v in rows]

    # -- fine-tuning jobs ---------------------------------------------------------------------------------------
    def job(self, key: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE key = ?", (key,))
        return _job(rows[0], self.directory / "ptst.db") if rows else None

    def jobs(self) -> list[JobRecord]:
        return [_job(r, self.directory / "ptst.db") for r in self._read("SELECT * FROM jobs ORDER BY rowid")]

    def put_job(self, rec: JobRecord, *, usd: float | None = None) -> None:
        """Record a job's outcome, with its cost when it succeeded (the estimate: what the vendor bills)."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.key, rec.backend, rec.base_model, rec.train_template, rec.seed, rec.status,
                    json.dumps(rec.model_ref) if rec.model_ref is not None else None, rec.code, rec.message,
                    time.time(),
                ),
            )
            if rec.status == "succeeded":
                c.execute("INSERT OR REPLACE INTO costs VALUES (?, 'train', ?, ?)", (rec.key, usd, time.time()))
            else:
                c.execute("DELETE FROM costs WHERE key = ?", (rec.key,))

    def costs(self, stage: str) -> list[float | None]:
        """The recorded cost of each finished step of a stage (None: not known)."""
        return [u for (u,) in self._read("SELECT usd FROM costs WHERE stage = ? ORDER BY key", (stage,))]

    # -- evaluation cells -----------------------------------------------------------------------------------------
    def replace_cells(self, rows: Sequence[CellRow]) -> None:
        """Replace the index of the spec's cells (key, spec, position, items) in one transaction: a kill leaves the
        old index or the new one, never a mix. Responses and verdicts are cached by key and stay. An index identical
        to the stored one (a re-run of the same spec) is left as it is: rewriting 100,000 items took seconds."""
        digest = hashlib.blake2b(repr(rows).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        if self._read("SELECT 1 FROM meta WHERE key = 'cells_digest' AND value = ?", (json.dumps(digest),)):
            return
        with self.transaction() as c:
            c.execute("DELETE FROM cells")
            c.execute("DELETE FROM cell_items")
            for key, spec, position, items in rows:
                c.execute("INSERT INTO cells VALUES (?, ?, ?)", (key, json.dumps(spec, sort_keys=True), position))
                c.executemany(_INSERT_ITEM, _item_rows(key, items))
            c.execute("INSERT OR REPLACE INTO meta VALUES ('cells_digest', ?)", (json.dumps(digest),))

    def put_cell(self, key: str, spec: dict[str, Any], position: int, items: Sequence[Item]) -> None:
        """Record (or reset) one cell and its items (gen_key, query, reference[, category]) in one transaction."""
        with self.transaction() as c:
            c.execute("DELETE FROM meta WHERE key = 'cells_digest'")  # the index no longer matches the recorded one
            c.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?)", (key, json.dumps(spec, sort_keys=True), position))
            c.execute("DELETE FROM cell_items WHERE cell = ?", (key,))
            c.executemany(_INSERT_ITEM, _item_rows(key, items))

    def drop_cells(self, keys: Iterable[str]) -> None:
        """Remove cells from the index (those of a job that ended without a model), in one transaction."""
        keys = list(keys)
        with self.transaction() as c:
            c.execute("DELETE FROM meta WHERE key = 'cells_digest'")  # the index no longer matches the recorded one
            c.executemany("DELETE FROM cells WHERE key = ?", [(k,) for k in keys])
            c.executemany("DELETE FROM cell_items WHERE cell = ?", [(k,) for k in keys])

    def cells(self) -> list[tuple[str, dict[str, Any]]]:
        return [(k, json.loads(s)) for k, s in self._read("SELECT key, spec FROM cells ORDER BY position, key")]

    def cell_items(self, cell: str) -> list[tuple[str, str, str | None]]:
        """(gen_key, query, reference) of a cell, in order."""
        return self._read("SELECT gen_key, query, reference FROM cell_items WHERE cell = ? ORDER BY idx", (cell,))

    def cell_categories(self, cell: str) -> list[str | None]:
        """Each item's category, in order (all None in a store opened read-only from before the column existed)."""
        if not self._has_category():
            return [None] * len(self.cell_items(cell))
        return [c for (c,) in self._read("SELECT category FROM cell_items WHERE cell = ? ORDER BY idx", (cell,))]

    # -- failures of cells (a generation or judge error after retries) ------------------------------------------
    def put_failure(self, key: str, stage: str, what: str, message: str) -> None:
        self._write("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?)", (key, stage, what, message, time.time()))

    def clear_failure(self, key: str) -> None:
        self._write("DELETE FROM failures WHERE key = ?", (key,))

    def failures(self) -> list[tuple[str, str, str, str]]:
        """(key, stage, what, message) of the cells whose last attempt failed."""
        return self._read("SELECT key, stage, what, message FROM failures ORDER BY updated, key")

    # -- generations and judgments --------------------------------------------------------------------------------
    def _lookup(self, sql: str, keys: Iterable[str]) -> list[tuple[Any, ...]]:
        """Rows of `sql` ("SELECT key, ... FROM t WHERE key IN (%s)") for `keys`. Many keys (a large run's re-run
        reads every response) are found by one scan of the table instead: 2-3x faster than 900-key IN lists."""
        keys = list(dict.fromkeys(keys))
        if len(keys) > SCAN_ABOVE or (len(keys) > SCAN_FROM and 3 * len(keys) >= self._rows_at_most(sql)):
            wanted = set(keys)
            return [r for r in self._read(sql.split(" WHERE ", maxsplit=1)[0]) if r[0] in wanted]
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(keys), 900):  # stay under SQLite's bound-parameter limit
            chunk = keys[i : i + 900]
            out.extend(self._read(sql % ",".join("?" * len(chunk)), chunk))
        return out

    def _rows_at_most(self, sql: str) -> int:
        """An upper bound on the rows of the table `sql` reads (the largest rowid: rowids are distinct positive
        integers), found without counting, to tell a read of most of a table (one scan) from one of a few keys."""
        table = sql.split(" FROM ", maxsplit=1)[1].split(maxsplit=1)[0]
        return int(self._read(f"SELECT coalesce(max(rowid), 0) FROM {table}")[0][0])

    def have_responses(self, keys: Iterable[str]) -> set[str]:
        """The keys that have a response (without reading the responses)."""
        return {k for (k,) in self._lookup("SELECT key FROM generations WHERE key IN (%s)", keys)}

    def responses(self, keys: Iterable[str]) -> dict[str, str]:
        return dict(self._lookup("SELECT key, response FROM generations WHERE key IN (%s)", keys))

    def prompts(self, keys: Iterable[str]) -> dict[str, str]:
        return dict(self._lookup("SELECT key, prompt FROM generations WHERE key IN (%s)", keys))

    def generations(self, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
        """key -> (rendered prompt, response), both read in one pass (the sample viewer shows them side by side)."""
        return {k: (p, r) for k, p, r in self._lookup("SELECT key, prompt, response FROM generations WHERE key IN (%s)",
                                                        keys)}

    def put_generations(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """rows: (gen_key, rendered_prompt_json, response), written in one transaction."""
        now = time.time()
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)", [(*r, now) for r in rows])
        self._maybe_checkpoint()

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
        self._maybe_checkpoint()


PID_WIDTH = 12  # the lock file's pid, padded to a fixed width: one write replaces it whole, never half


def _acquire(d: Path) -> Any:
    """The directory lock: held for the whole run; a second process is refused with the holder's pid."""
    try:
        lock_file = open(d / "ptst.lock", "a+")  # noqa: SIM115 - held for the whole run
    except OSError as e:
        raise UsageError(f"{d}: cannot write the run lock ({e.strerror}); choose another --out") from e
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # the lock is held: the holder's pid is the whole story
        holder = _holder(lock_file)
        lock_file.close()
        raise RunLocked(
            f"{d}: another ptst process ({f'pid {holder}' if holder else 'pid not yet written'}) is using this "
            "directory; wait for it to finish or choose another --out"
        ) from None
    # One fixed-width write at offset 0 (no truncate first): a reader never sees the file empty or half-written.
    os.pwrite(lock_file.fileno(), f"{os.getpid():<{PID_WIDTH}}".encode()[:PID_WIDTH], 0)
    os.ftruncate(lock_file.fileno(), PID_WIDTH)
    return lock_file


def _holder(lock_file: Any, wait_s: float = 1.0) -> str | None:
    """The holder's pid from the lock file. It takes the lock before writing its pid, so an empty file is read again
    for up to `wait_s` before giving up."""
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(lock_file.fileno(), 64, 0).decode("ascii", errors="replace").strip()
        if text.isdigit() or time.monotonic() >= deadline:
            return text if text.isdigit() else None
        time.sleep(0.02)


@dataclass(frozen=True)
class Judged:
    unsafe: bool | None
    score: int | None
    raw: str | None
    error: str | None


def _job(row: tuple[Any, ...], db: Path) -> JobRecord:
    key, backend, base_model, tt, seed, status, ref, code, message, _ = row
    model_ref = None
    if ref:
        try:
            model_ref = json.loads(ref)
        except (TypeError, ValueError):
            model_ref = None
        if not isinstance(model_ref, dict):
            raise bad_model_ref(db, key, "not a JSON object")
    return JobRecord(key, backend, base_model, tt, seed, status, model_ref, code, message)


def bad_model_ref(db: Path, key: str, why: str) -> StoreError:
    """A `jobs.model_ref` that cannot be read: once the row is marked as an error, a re-run finds the job again from
    its ledger entry (a remote job is not paid for twice)."""
    return StoreError(
        f"{db}: jobs row {key}: model_ref is {why} (the store was edited or damaged); mark the job for a re-check "
        f"with `sqlite3 {db} \"UPDATE jobs SET status = 'error', model_ref = NULL WHERE key = '{key}'\"` and run "
        "the same command again: the job is found again from its ledger entry (a remote job is not paid for twice)"
    )

"""The run store: one SQLite file (WAL) per output directory, holding every result the moment it exists.

Every step is keyed by a content hash of what determines its result (ptst.keys, schema recorded in meta), so a
re-run skips what is done, a killed run resumes where it stopped, and an external job (an OpenAI fine-tune) recorded
in the ledger is found again instead of being paid for twice. One process at a time (`ptst.store.lock`). The parts:
`files` (schema, create, connect), `base` (connection, lock, transactions, meta), `integrity` (committed counts,
checkpoints, stamp), and the tables: `jobs` (ledger, jobs, costs), `cells` (cell index, failures), `responses`
(generations, judgments). A store that cannot be trusted (empty, corrupt, another key schema) is refused, never
silently started over.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptst.errors import StoreError, UsageError
from ptst.keys import KEY_SCHEMA
from ptst.store import files, lock
from ptst.store.cells import CellTables
from ptst.store.integrity import Integrity
from ptst.store.jobs import JobTables
from ptst.store.responses import ResponseTables


class RunStore(Integrity, JobTables, CellTables, ResponseTables):
    """Open with `RunStore.open(dir)` (a context manager that holds the directory lock)."""

    @classmethod
    @contextmanager
    def open(cls, directory: str | Path, *, lock: bool = True) -> Iterator[RunStore]:
        d = Path(directory)
        if lock:
            files.prepare_dir(d)
        elif not d.is_dir():  # a reader (`ptst report DIR`) writes nothing here: DIR may be read-only
            raise UsageError(f"{d}: no run store (ptst.db) here; give the --out directory of a `ptst run`")
        lock_file = _lock.acquire(d) if lock else None
        try:
            db = d / "ptst.db"
            files.check_file(db)
            if not db.exists():
                if not lock:
                    raise UsageError(f"{d}: no run store (ptst.db) here; give the --out directory of a `ptst run`")
                try:
                    files.create(db)
                except sqlite3.Error as e:
                    raise StoreError(f"{db}: cannot create the run store ({e}); free some space or choose another --out") from None
            try:
                conn = files.connect(db) if lock or os.access(d, os.W_OK) else files.connect_read_only(db)
            except sqlite3.Error as e:
                raise files.corrupt(db, str(e)) from None
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
                _lock.release(lock_file)

    def _init(self, *, writable: bool) -> None:
        db = self.db
        # The integrity scan reads the whole file (a second per few hundred MB): it runs when the last writer did
        # not close the store (a kill, a crash, a run still going), and damage done while it was closed surfaces as
        # the same one-line error from the first read that meets it (`_writing`).
        try:
            check = ("ok",) if self._closed_cleanly() else self.conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            raise files.corrupt(db, str(e)) from None
        if check is None or check[0] != "ok":
            raise files.corrupt(db, f"integrity check: {check[0] if check else 'no answer'}")
        with self._writing():
            if writable:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.executescript(files.SCHEMA)
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


_lock = lock  # `open`'s keyword argument `lock` shadows the module inside it

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
from ptst.store.integrity import COUNTED, SIDECAR, Integrity
from ptst.store.jobs import JobTables
from ptst.store.responses import ResponseTables


class RunStore(Integrity, JobTables, CellTables, ResponseTables):
    """Open with `RunStore.open(dir)` (a context manager that holds the directory lock)."""

    @classmethod
    @contextmanager
    def open(cls, directory: str | Path, *, lock: bool = True, fresh: bool = False,
             secrets: tuple[str, ...] = ()) -> Iterator[RunStore]:
        """`fresh`: start a new store in a folder whose store was lost (its work is bought again; refused where a
        store exists). `secrets`: known API keys, scrubbed from every text stored."""
        d = Path(directory)
        if lock:
            files.prepare_dir(d)
        elif not d.is_dir():  # a reader (`ptst report DIR`) writes nothing here: DIR may be read-only
            raise UsageError(f"{d}: no run store (ptst.db) here; give the --out directory of a `ptst run`")
        lock_file = _lock.acquire(d) if lock else None
        try:
            db = d / "ptst.db"
            files.check_file(db)
            created = not db.exists()
            if lock:
                _check_fresh(d, db, fresh)
            if created:
                if not lock:
                    raise UsageError(f"{d}: no run store (ptst.db) here; give the --out directory of a `ptst run`")
                try:
                    files.create(db)
                except sqlite3.Error as e:
                    raise StoreError(f"{db}: cannot create the run store ({e}); free some space or choose another --out") from e
            try:
                conn = files.connect(db) if lock or os.access(d, os.W_OK) else files.connect_read_only(db)
            except sqlite3.Error as e:
                raise files.corrupt(db, str(e)) from e
            store = cls(d, conn)
            store.secrets = tuple(secrets)
            try:
                store._init(writable=lock, created=created)
                try:
                    yield store
                except (KeyboardInterrupt, SystemExit):
                    store.interrupted.set()  # worker threads stop at the store (`_gate`), losing only what is in flight
                    raise
                if lock:
                    store.set_meta("closed_cleanly", True)  # the next open may skip the integrity scan
                    store.checkpoint()  # a finished command leaves everything in ptst.db itself
            finally:
                with store.lock:  # a worker mid-commit finishes it first; later ones are parked (`_gate`)
                    conn.close()
        finally:
            if lock_file is not None:
                _lock.release(lock_file)

    def _init(self, *, writable: bool, created: bool = False) -> None:
        db = self.db
        # The integrity scan reads the whole file (a second per few hundred MB): it runs when the last writer did
        # not close the store (a kill, a crash, a run still going), and damage done while it was closed surfaces as
        # the same one-line error from the first read that meets it (`_writing`).
        try:
            check = ("ok",) if self._closed_cleanly() else self.conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            raise files.corrupt(db, str(e)) from e
        if check is None or check[0] != "ok":
            raise files.corrupt(db, f"integrity check: {check[0] if check else 'no answer'}")
        rebuild_index = self._check_tables(created, writable)
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
        if writable and rebuild_index:
            self._write("DELETE FROM meta WHERE key = 'cells_digest'", ())  # the runner writes the index again
        self._check_index()  # before the counts: the record they rewrite carries the index's size
        if writable:
            self._check_counts()
            self._check_rows()

    def _check_tables(self, created: bool, writable: bool) -> bool:
        """Tables missing from an existing store: the cell index (and the failures list) are rebuilt from the spec
        (True: rebuild the index); a table of paid work is made again empty and the committed counts refuse it if it
        held any (`_check_counts`); any other (the spend in `costs`) is refused (exit 2)."""
        have = {n for (n,) in self._read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in files.TABLES if t not in have]
        self._meta_lost = not created and "meta" in missing
        if created or not missing:
            return False
        lost = [t for t in missing if t not in REBUILT and t not in COUNTED]  # counted ones: `_check_counts`
        if lost:
            raise StoreError(
                f"{self.db}: the run store has no {', '.join(lost)} table (dropped or damaged), so its recorded work "
                f"would be bought again or reported wrong; restore the folder from a backup, or copy out what survives "
                f"with `sqlite3 {self.db} .recover > recovered.sql` (it finds rows of dropped tables) and choose "
                "another --out"
            )
        if not writable and any(t in missing for t in ("cells", "cell_items")):
            raise StoreError(
                f"{self.db}: the cell index ({', '.join(missing)}) is missing, so a report would miss results; run "
                "the same `ptst run SPEC --out DIR` again to rebuild it from the spec (nothing is bought again)"
            )
        return True


_lock = lock  # `open`'s keyword argument `lock` shadows the module inside it
REBUILT = ("meta", "cells", "cell_items", "failures")  # tables a run rebuilds from the spec (and from the sidecar)
# What a run leaves in its folder besides the store: with any of these and no ptst.db, the store was lost.
RUN_FILES = (SIDECAR, "results.json", "report.md", "report.html", "samples.js", "models", "ptst.db-wal")


def _check_fresh(d: Path, db: Path, fresh: bool) -> None:
    """A folder that held a run but has no usable store (deleted, a dangling link) is refused: a plain re-run would
    buy every generation, verdict and job of it again. `--fresh` starts over deliberately."""
    link = db.is_symlink() and not db.exists()
    if fresh:
        if db.exists():
            raise UsageError(
                f"{d}: --fresh starts over only where the run store is lost, and {db.name} is here; move it away "
                "first to start over, or choose a new --out"
            )
        if link:
            db.unlink()
        (d / SIDECAR).unlink(missing_ok=True)  # the record of the lost store's work
        return
    if link:
        raise UsageError(
            f"{db}: the run store is a symbolic link to {os.readlink(db)!r}, which cannot be opened (missing, or a "
            "loop); restore what it points to, or pass --fresh to start a new store here (buying its work again), "
            "or choose a new --out"
        )
    if db.exists():
        return
    left = [n for n in RUN_FILES if (d / n).exists() or (d / n).is_symlink()]
    if left:
        raise UsageError(
            f"{d}: this folder holds a run ({', '.join(left)}) but its run store {db.name} is missing, so a re-run "
            f"would buy all its work again; restore {db.name} from a backup, or start over deliberately with "
            "--fresh (paying again) or a new --out"
        )

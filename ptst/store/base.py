"""What every part of the run store shares: one connection guarded by one lock, one-line errors for SQLite's
failures, transactions, and the `meta` table of JSON values.

The scheduler's worker threads share the connection; every write is one transaction, so a kill loses at most the
work in flight and never half a chunk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptst.errors import StoreError
from ptst.store import files


class StoreBase:
    """The connection and its lock; the table mixins (`ptst.store.jobs`, `.cells`, `.responses`) read and write
    through `_read`, `_write` and `transaction` only."""

    def __init__(self, directory: Path, conn: sqlite3.Connection):
        self.directory = directory
        self.conn = conn
        self.lock = threading.RLock()
        self._writable = False
        self._checkpointed = time.monotonic()
        self.secrets: tuple[str, ...] = ()  # known API keys, scrubbed from every text stored (`ptst.store.scrub`)
        self.interrupted = threading.Event()  # set on Ctrl-C: worker threads stop at their next store access

    @property
    def db(self) -> Path:
        return self.directory / "ptst.db"

    def _maybe_checkpoint(self) -> None:
        """Overridden by the integrity part (`ptst.store.integrity`): writes call it after each commit."""

    def _committed(self, table: str, added: int) -> None:
        """Overridden by the integrity part: `added` new rows of a paid-work table were just committed."""

    def _index_changed(self, c: sqlite3.Connection) -> None:
        """Overridden by the integrity part: the cell index was rewritten inside transaction `c`."""

    def _scrub(self, text: Any) -> Any:
        """`text` without any known secret (an endpoint that echoes its key must not put it in the store)."""
        if not self.secrets or not isinstance(text, str):
            return text
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

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
                    f"{self.db}: another process has held a lock on the run store for more than "
                    f"{files.BUSY_TIMEOUT_S:g} s (a `sqlite3` shell or database browser with an open transaction?); "
                    "close it and run the same command again — everything committed before is kept"
                ) from e
            if "disk is full" in msg or "disk I/O error" in msg:
                raise StoreError(
                    f"{self.db}: {msg} — everything committed before is kept; free some space "
                    "and run the same command again to resume"
                ) from e
            if "Could not decode to UTF-8" in msg:  # a text edited by hand into bytes that are not UTF-8
                raise StoreError(
                    f"{self.db}: a stored text is not valid UTF-8 ({msg.partition(' with text')[0]}): the store was edited "
                    f"or damaged; restore the folder from a backup, or copy out what survives with `sqlite3 {self.db} "
                    ".recover > recovered.sql` and choose another --out"
                ) from e
            if "no such table" in msg or "no such column" in msg:  # a table dropped or altered by hand
                raise StoreError(
                    f"{self.db}: {msg} (the store was edited or damaged); restore the folder from a backup, or copy out "
                    f"what survives with `sqlite3 {self.db} .recover > recovered.sql` and choose another --out"
                ) from e
            raise
        except sqlite3.ProgrammingError:
            self._gate()  # the store was closed by Ctrl-C while this worker waited for it: parked like the others
            raise
        except sqlite3.DatabaseError as e:
            if type(e) is sqlite3.DatabaseError:  # "database disk image is malformed": damage met by a read or write
                raise files.corrupt(self.db, str(e)) from e
            raise  # a constraint or programming error: a bug, with its traceback

    def _gate(self) -> None:
        """After Ctrl-C, a worker thread that reaches the store is parked for good (it is a daemon: the process
        exits without it). Its event loop stops with it, so no request starts after the interrupt and no slot is
        passed on: like a SIGKILL, an interrupt loses at most the requests in flight. (Raising here instead freed
        each slot for a new request, paid for and never stored: up to 18 redone at concurrency 8.)"""
        if self.interrupted.is_set() and threading.current_thread() is not threading.main_thread():
            threading.Event().wait()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._gate()
        with self.lock, self._writing():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _write(self, sql: str, params: Sequence[Any]) -> None:
        self._gate()
        with self.lock, self._writing():
            self.conn.execute(sql, params)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._gate()
        with self.lock, self._writing():
            return self.conn.execute(sql, params).fetchall()

    def edited(self, what: str, value: Any, why: str = "not what ptst writes") -> StoreError:
        """A row that is not what ptst writes (edited by hand or damaged): one line naming it and what to do."""
        return StoreError(
            f"{self.db}: {what} is {why} ({str(value)[:40]!r}): the store was edited or damaged; "
            f"restore the folder from a backup, or copy out what survives with `sqlite3 {self.db} .recover > "
            "recovered.sql` and choose another --out"
        )

    # -- meta -------------------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except (TypeError, ValueError):
            raise self.edited(f"meta.{key}", rows[0][0], "not valid JSON") from None

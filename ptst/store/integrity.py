"""Whether a run store can be trusted: the committed counts that detect lost work, the checkpoints that bound what a
lost WAL costs, and the stamp that tells an unchanged store from a changed one (a finished plan's results are read
back only from an unchanged store).

A store holding fewer rows than it recorded as committed is refused, never silently started over: a run on it would
buy the missing work again.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from ptst.errors import StoreError
from ptst.store.base import StoreBase

# How often the WAL is copied into ptst.db as the run goes: a lost or damaged ptst.db-wal then costs at most the work
# of the last few seconds, never the whole run. The committed counts are recorded at the same moments.
CHECKPOINT_S = 2.0
COUNTED = ("jobs", "ledger", "generations", "judgments")  # the tables whose rows are paid work
# How `stamp` sees each table: "*" a digest of every row (the small tables, where a hand edit in place
# matters: a job's model_ref, a ledger entry), else the row count and the latest value of the column that says when a
# row was written (None: count only) for the tables that grow with the responses.
STAMPED = {"jobs": "*", "ledger": "*", "cells": "*", "failures": "*", "cell_items": None, "generations": "created",
           "judgments": "created", "costs": "updated"}
# meta entries that every run (or close) rewrites without changing what the results are made from
VOLATILE_META = ("finished_at", "finished_plan", "committed", "closed_cleanly")


class Integrity(StoreBase):
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
        db = self.db
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

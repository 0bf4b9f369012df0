"""Whether a run store can be trusted: the committed counts that detect lost work, the checkpoints that bound what a
lost WAL costs, and the stamp that tells an unchanged store from a changed one (a finished plan's results are read
back only from an unchanged store).

A store holding fewer rows than it recorded as committed is refused, never silently started over: a run on it would
buy the missing work again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
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
# The durable record of committed work, beside ptst.db and outside its WAL: rewritten whole (atomically) after every
# commit that adds paid rows, so a lost or damaged -wal, a dropped table or a damaged `meta` is seen at the next open.
SIDECAR = "ptst.committed.json"
INDEX = ("cells", "cell_items")  # the cell index: what results are built from (rebuilt from the spec if lost)


def read_sidecar(d: Path) -> dict[str, Any]:
    """The durable record (empty when there is none); one that is not ptst's is refused, not ignored."""
    path = d / SIDECAR
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise _bad_sidecar(path, str(e)) from e
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(_counts_ok(data.get(k, {})) for k in ("counts", "index")):
        raise _bad_sidecar(path, "not the JSON ptst writes")
    return data


def _counts_ok(value: Any) -> bool:
    return isinstance(value, dict) and all(type(n) is int and n >= 0 for n in value.values())


def _bad_sidecar(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path}: the record of committed work is unreadable ({why}): it was edited or damaged; restore the folder "
        f"from a backup, or delete {path.name} to go on with what ptst.db holds (work missing from it is bought again)"
    )


def write_sidecar(d: Path, record: dict[str, Any]) -> None:
    """Replace the record whole (a temporary file renamed into place): a kill leaves the old one or the new one."""
    tmp = d / (SIDECAR + ".new")
    tmp.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
    os.replace(tmp, d / SIDECAR)


class Integrity(StoreBase):
    _tally: dict[str, int] | None = None  # committed rows of each COUNTED table, kept as writes commit
    _index: dict[str, int] | None = None  # rows of the cell index as last written
    _meta_lost = False  # the `meta` table itself was missing at open (dropped or damaged)
    _written: dict[str, Any] | None = None  # the record as last written (or found) beside the store

    def _closed_cleanly(self) -> bool:
        """Whether the last writer closed the store (its mark is removed while a writer has it open)."""
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            return False
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'closed_cleanly'").fetchone()
        return row == ("true",)

    # -- committed work: checkpoints and the counts that detect its loss ------------------------------------------
    def _counts(self) -> dict[str, int]:
        return {t: self._read(f"SELECT count(*) FROM {t}")[0][0] for t in COUNTED}

    def _recorded(self) -> dict[str, int]:
        """The committed counts recorded in meta and in the sidecar, the larger of each (either may be the one that
        survived: a lost -wal takes meta's latest value with it, a dropped `meta` all of it). A `meta.committed`
        that is not a mapping of counts is damage, refused, never read as 'none'. Its absence from a `meta` that is
        there is the user's deliberate acceptance of the loss (the advice below): it is written at every open."""
        meta = self.get_meta("committed")
        if meta is not None and not _counts_ok(meta):
            raise self.edited("meta.committed", meta, "not a mapping of row counts")
        if meta is None and not self._meta_lost:
            return {}
        side = read_sidecar(self.directory).get("counts", {})
        return {t: max((meta or {}).get(t, 0), side.get(t, 0)) for t in COUNTED}

    def _check_counts(self) -> None:
        """Refuse a store holding fewer rows than it recorded as committed (a dropped table, a ptst.db copied without
        its -wal file, a damaged or deleted WAL, a damaged meta): a run on it would buy the missing work again."""
        recorded = self._recorded()
        self._written = read_sidecar(self.directory) or None
        have = self._counts()
        self._tally = have
        lost = {t: n - have[t] for t, n in recorded.items() if have[t] < n}
        if not lost:
            if self._writable:  # recorded at once, and copied into ptst.db: a lost -wal cannot take it with it
                self.checkpoint()
                self._write_record()
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

    def _committed(self, table: str, added: int) -> None:
        if added and self._tally is not None and self._writable:
            with self.lock:
                self._tally[table] += added
                self._write_record()

    def _write_record(self) -> None:
        record: dict[str, Any] = {"counts": dict(self._tally or {})}
        if self._index is not None:
            record["index"] = dict(self._index)
        if record == self._written:  # a re-run that bought nothing leaves the folder's files as they were
            return
        try:
            write_sidecar(self.directory, record)
            self._written = record
        except OSError as e:
            raise StoreError(f"{self.directory / SIDECAR}: cannot write the record of committed work ({e.strerror}); "
                             "free some space and run the same command again — everything committed is kept") from e

    # -- the cell index results are built from ----------------------------------------------------------------------
    def _index_counts(self, c: sqlite3.Connection | None = None) -> dict[str, int]:
        if c is not None:
            return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in INDEX}
        return {t: self._read(f"SELECT count(*) FROM {t}")[0][0] for t in INDEX}

    def _index_changed(self, c: sqlite3.Connection) -> None:
        self._index = self._index_counts(c)
        c.execute("INSERT OR REPLACE INTO meta VALUES ('cells_index', ?)", (json.dumps(self._index),))
        if self._writable:
            self._write_record()

    def _check_index(self) -> None:
        """A cell index with fewer rows than were last written (a dropped or emptied `cells`/`cell_items`) would
        report a 'complete' run with rows missing. A writer rebuilds it from the spec (the recorded digest is dropped
        so the runner rewrites it; nothing is bought again); a reader (`ptst report`) refuses."""
        meta = self.get_meta("cells_index")
        side = read_sidecar(self.directory).get("index", {})
        recorded = {t: max((meta if _counts_ok(meta) else {}).get(t, 0), side.get(t, 0)) for t in INDEX}
        have = self._index_counts()
        short = [t for t in INDEX if have[t] < recorded[t]]
        self._index = recorded if short else have
        if not short:
            return
        if self._writable:
            self._write("DELETE FROM meta WHERE key = 'cells_digest'", ())
            return
        what = ", ".join(f"{have[t]:,} of {recorded[t]:,} {t} rows" for t in short)
        raise StoreError(
            f"{self.db}: the cell index lost rows ({what}: a dropped or emptied table?), so a report would miss "
            "results; run the same `ptst run SPEC --out DIR` again to rebuild it from the spec (nothing is bought "
            "again), then `ptst report`"
        )

    def _check_rows(self) -> None:
        """Rows edited by hand into what ptst never writes are refused before anything is spent: a verdict whose
        score or flag is not an integer, a cost that is not a number, a ledger entry that is not a JSON object, and
        spend records missing for jobs that produced a model (training spend would read as $0)."""
        bad = self._read("SELECT key, unsafe, score FROM judgments WHERE typeof(unsafe) NOT IN ('integer', 'null') "
                         "OR typeof(score) NOT IN ('integer', 'null') LIMIT 1")
        if bad:
            raise self.edited(f"judgments row {bad[0][0]}: unsafe/score", bad[0][1:], "not an integer")
        bad = self._read("SELECT key, usd FROM costs WHERE typeof(usd) NOT IN ('integer', 'real', 'null') LIMIT 1")
        if bad:
            raise self.edited(f"costs row {bad[0][0]}: usd", bad[0][1], "not a number")
        for name, value in self._read("SELECT name, value FROM ledger"):
            try:
                ok = isinstance(json.loads(value), dict)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise self.edited(f"ledger row {name!r}", value, "not a JSON object")
        missing = self._read("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND key NOT IN "
                             "(SELECT key FROM costs WHERE stage = 'train')")[0][0]
        if missing:
            raise StoreError(
                f"{self.db}: the spend of {missing} fine-tuning job(s) that produced a model is missing from the costs "
                "table (dropped or edited), so the report would understate what was spent; restore the folder from a "
                f"backup, or copy out what survives with `sqlite3 {self.db} .recover > recovered.sql`"
            )

    def checkpoint(self) -> None:
        """Record the committed counts and copy the WAL into ptst.db (without waiting for readers): from here on,
        losing the -wal file loses nothing before this moment. Called every CHECKPOINT_S by writes, and at close."""
        self._gate()
        with self.lock:
            self._checkpointed = time.monotonic()
            with self._writing():
                counts = self._counts()
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('committed', ?)", (json.dumps(counts),))
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
        with self.lock, self._writing():  # a damaged page met here is the same one-line error as anywhere
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

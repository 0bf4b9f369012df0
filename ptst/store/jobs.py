"""The paid-for tables: the job ledger (external ids recorded before waiting on them), the fine-tuning jobs and
what each cost. What is here is never bought again, so a row that cannot be read is an error, never a miss."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptst.errors import StoreError
from ptst.store.base import StoreBase


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


class JobTables(StoreBase):
    # -- ledger (JobLedger protocol) --------------------------------------------------------------------------
    def _ledger_value(self, name: str, text: Any) -> dict[str, Any]:
        """A ledger value that is not a JSON object is a hand edit: refused (a miss would create the job again)."""
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, dict):
            raise self.edited(f"ledger row {name!r}", text, "not a JSON object")
        return value

    def get(self, name: str) -> dict[str, Any] | None:
        rows = self._read("SELECT value FROM ledger WHERE name = ?", (name,))
        return self._ledger_value(name, rows[0][0]) if rows else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        text = self._scrub(json.dumps(value, sort_keys=True))
        with self.transaction() as c:
            new = c.execute("SELECT 1 FROM ledger WHERE name = ?", (name,)).fetchone() is None
            c.execute("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?)", (name, text, time.time()))
        self._committed("ledger", int(new))
        self._maybe_checkpoint()

    def ledger_entries(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        rows = self._read("SELECT name, value FROM ledger WHERE name LIKE ? ORDER BY name", (prefix + "%",))
        return [(n, self._ledger_value(n, v)) for n, v in rows]

    # -- fine-tuning jobs ---------------------------------------------------------------------------------------
    def job(self, key: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE key = ?", (key,))
        return _job(rows[0], self.db) if rows else None

    def jobs(self) -> list[JobRecord]:
        return [_job(r, self.db) for r in self._read("SELECT * FROM jobs ORDER BY rowid")]

    def put_job(self, rec: JobRecord, *, usd: float | None = None) -> None:
        """Record a job's outcome, with its cost when it succeeded (the estimate: what the vendor bills)."""
        ref = self._scrub(json.dumps(rec.model_ref)) if rec.model_ref is not None else None
        with self.transaction() as c:
            new = c.execute("SELECT 1 FROM jobs WHERE key = ?", (rec.key,)).fetchone() is None
            c.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.key, rec.backend, rec.base_model, rec.train_template, rec.seed, rec.status, ref,
                    self._scrub(rec.code), self._scrub(rec.message), time.time(),
                ),
            )
            if rec.status == "succeeded":
                c.execute("INSERT OR REPLACE INTO costs VALUES (?, 'train', ?, ?)", (rec.key, usd, time.time()))
            else:
                c.execute("DELETE FROM costs WHERE key = ?", (rec.key,))
        self._committed("jobs", int(new))

    def costs(self, stage: str) -> list[float | None]:
        """The recorded cost of each finished step of a stage (None: not known)."""
        rows = self._read("SELECT key, usd FROM costs WHERE stage = ? ORDER BY key", (stage,))
        for key, u in rows:
            if u is not None and not isinstance(u, (int, float)):
                raise self.edited(f"costs row {key}: usd", u, "not a number")
        return [u for _, u in rows]


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

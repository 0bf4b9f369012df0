"""The cell index (each cell of the spec and its items in order) and the cells whose last attempt failed.

Results are built from this index: a cell or item that is missing would make a report with fewer rows, so the
index is replaced whole in one transaction, and its digest is kept to tell an unchanged index from a new one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ptst.store.base import StoreBase

# An item: (gen_key, query, reference) or (gen_key, query, reference, category).
Item = tuple[str, str, str | None] | tuple[str, str, str | None, str | None]
CellRow = tuple[str, dict[str, Any], int, Sequence[Item]]  # key, spec, position, items
_INSERT_ITEM = "INSERT INTO cell_items (cell, idx, gen_key, query, reference, category) VALUES (?, ?, ?, ?, ?, ?)"


def _item_rows(key: str, items: Sequence[Item]) -> list[tuple[Any, ...]]:
    return [(key, i, it[0], it[1], it[2], it[3] if len(it) > 3 else None) for i, it in enumerate(items)]  # type: ignore[misc]


def cells_digest(rows: Sequence[CellRow]) -> str:
    return hashlib.blake2b(repr(rows).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class CellTables(StoreBase):
    def replace_cells(self, rows: Sequence[CellRow]) -> None:
        """Replace the index of the spec's cells (key, spec, position, items) in one transaction: a kill leaves the
        old index or the new one, never a mix. Responses and verdicts are cached by key and stay. An index identical
        to the stored one (a re-run of the same spec) is left as it is: rewriting 100,000 items took seconds."""
        digest = cells_digest(rows)
        n_items = sum(len(items) for *_, items in rows)
        if self._read("SELECT 1 FROM meta WHERE key = 'cells_digest' AND value = ?", (json.dumps(digest),)) and \
                self._read("SELECT count(*) FROM cell_items")[0][0] == n_items and \
                self._read("SELECT count(*) FROM cells")[0][0] == len(rows):
            return
        with self.transaction() as c:
            c.execute("DELETE FROM cells")
            c.execute("DELETE FROM cell_items")
            for key, spec, position, items in rows:
                c.execute("INSERT INTO cells VALUES (?, ?, ?)", (key, json.dumps(spec, sort_keys=True), position))
                c.executemany(_INSERT_ITEM, _item_rows(key, items))
            c.execute("INSERT OR REPLACE INTO meta VALUES ('cells_digest', ?)", (json.dumps(digest),))
            self._index_changed(c)

    def put_cell(self, key: str, spec: dict[str, Any], position: int, items: Sequence[Item]) -> None:
        """Record (or reset) one cell and its items (gen_key, query, reference[, category]) in one transaction."""
        with self.transaction() as c:
            c.execute("DELETE FROM meta WHERE key = 'cells_digest'")  # the index no longer matches the recorded one
            c.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?)", (key, json.dumps(spec, sort_keys=True), position))
            c.execute("DELETE FROM cell_items WHERE cell = ?", (key,))
            c.executemany(_INSERT_ITEM, _item_rows(key, items))
            self._index_changed(c)

    def drop_cells(self, keys: Iterable[str]) -> None:
        """Remove cells from the index (those of a job that ended without a model), in one transaction."""
        keys = list(keys)
        with self.transaction() as c:
            c.execute("DELETE FROM meta WHERE key = 'cells_digest'")  # the index no longer matches the recorded one
            c.executemany("DELETE FROM cells WHERE key = ?", [(k,) for k in keys])
            c.executemany("DELETE FROM cell_items WHERE cell = ?", [(k,) for k in keys])
            self._index_changed(c)

    def cells(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for k, s in self._read("SELECT key, spec FROM cells ORDER BY position, key"):
            try:
                spec = json.loads(s)
            except (TypeError, ValueError):
                spec = None
            if not isinstance(spec, dict):
                raise self.edited(f"cells row {k}: spec", s, "not a JSON object")
            out.append((k, spec))
        return out

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
        self._write("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?)",
                    (key, stage, what, self._scrub(message), time.time()))

    def clear_failure(self, key: str) -> None:
        self._write("DELETE FROM failures WHERE key = ?", (key,))

    def failures(self) -> list[tuple[str, str, str, str]]:
        """(key, stage, what, message) of the cells whose last attempt failed."""
        return self._read("SELECT key, stage, what, message FROM failures ORDER BY updated, key")

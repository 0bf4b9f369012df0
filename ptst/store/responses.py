"""The bought outputs: each generation (rendered prompt and response) and each judge's verdict, keyed by content
hash and written a chunk per transaction as they arrive. Lookups of many keys scan the table once instead of
issuing thousands of indexed IN lists."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ptst.store.base import StoreBase

SCAN_ABOVE = 20_000  # keys looked up at once above which a table scan beats indexed IN lists
SCAN_FROM = 2_000  # from this many keys, a scan also wins when they are a third of the table or more


@dataclass(frozen=True)
class Judged:
    unsafe: bool | None
    score: int | None
    raw: str | None
    error: str | None


class ResponseTables(StoreBase):
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
        """rows: (gen_key, rendered_prompt_json, response), written in one transaction (known secrets scrubbed)."""
        now = time.time()
        with self.transaction() as c:
            new = _new_keys(c, "generations", [r[0] for r in rows])
            c.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)",
                          [(k, self._scrub(p), self._scrub(r), now) for k, p, r in rows])
        self._committed("generations", new)
        self._maybe_checkpoint()

    def judgments(self, keys: Iterable[str]) -> dict[str, Judged]:
        rows = self._lookup("SELECT key, unsafe, score, raw, error FROM judgments WHERE key IN (%s)", keys)
        for k, u, s, _, _ in rows:  # a hand edit (a score typed as text) must not reach the analysis
            if not (u is None or type(u) is int) or not (s is None or type(s) is int):
                raise self.edited(f"judgments row {k}: unsafe/score", (u, s), "not an integer")
        return {k: Judged(None if u is None else bool(u), s, raw, err) for k, u, s, raw, err in rows}

    def put_judgments(self, judge: str, rows: Sequence[tuple[str, Judged]]) -> None:
        """rows: (judgment_key, verdict), written in one transaction (known secrets scrubbed)."""
        now = time.time()
        with self.transaction() as c:
            new = _new_keys(c, "judgments", [k for k, _ in rows])
            c.executemany(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (k, judge, None if j.unsafe is None else int(j.unsafe), j.score, self._scrub(j.raw),
                     self._scrub(j.error), now)
                    for k, j in rows
                ],
            )
        self._committed("judgments", new)
        self._maybe_checkpoint()


def _new_keys(c: Any, table: str, keys: Sequence[str]) -> int:
    """How many of `keys` are not in `table` yet (inside the writing transaction): the paid rows it adds."""
    unique = list(dict.fromkeys(keys))
    have = 0
    for i in range(0, len(unique), 900):
        chunk = unique[i : i + 900]
        have += c.execute(f"SELECT count(*) FROM {table} WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchone()[0]
    return len(unique) - have

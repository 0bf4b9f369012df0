"""The per-sample data behind the HTML report's sample viewer: every item's prompt as rendered, its response and each
judge's verdict, read from the run store and written as `samples.js` beside report.html.

Why a sibling script and not data inside report.html: a run of 20,000 responses carries tens of megabytes of text,
which would make the summary page itself slow to open; a classic `<script src>` loads from the same folder under
`file://` without a server (unlike `fetch`, which browsers refuse there), so the page stays usable offline and its
tables and figures show before the samples arrive. The data is one JSON object assigned to `window.PTST_SAMPLES`:
texts go into a string table (a rendered prompt is shared by every model tested on it), rows refer to it by index,
and every `<` is written as `\\u003c` so no text can close a script element if the file is ever inlined. The viewer
renders text with `textContent` only (`ptst.report.sampleview`), so a response containing `<script>` shows as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptst.plan import JudgmentKeys
    from ptst.store import RunStore

SAMPLES_FILE = "samples.js"
SAMPLES_VAR = "PTST_SAMPLES"
FORMAT = 1


@dataclass(frozen=True)
class SampleCell:
    run: str | None
    backend: str
    base_model: str
    train_template: str | None
    test_template: str
    seed: int | None
    checkpoint: int | None
    safety_mix: str | None

    @property
    def label(self) -> str:
        """`mock-llama2 · chat:vanilla → chat:llama · seed 0`, with the checkpoint, mix and run when present."""
        parts = [self.run] if self.run else []
        parts.append(self.backend)
        parts.append(f"{self.train_template or 'base'} → {self.test_template}")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.checkpoint is not None:
            parts.append(f"step {self.checkpoint}")
        if self.safety_mix is not None:
            parts.append(f"mix {self.safety_mix}")
        return " · ".join(parts)


@dataclass
class SampleRow:
    cell: SampleCell
    benchmark: str
    kind: str  # "safety" or "task"
    category: str | None
    index: int
    query: str
    prompt: str | None  # the prompt as rendered for the model (None: not generated yet)
    response: str | None
    reference: str | None = None
    # one per judge of the run, in the judges' order: (unsafe, score, judge's raw reply); None: not judged
    verdicts: list[tuple[bool | None, int | None, str | None] | None] = field(default_factory=list)


def prompt_text(stored: str | None) -> str | None:
    """The rendered prompt as a reader should see it: the backend's rendered text (exactly what the model read, for
    text-rendering families) or else the chat messages, one `role: content` block each."""
    if stored is None:
        return None
    try:
        d = json.loads(stored)
    except ValueError:
        return stored
    if isinstance(d, dict):
        if isinstance(d.get("text"), str) and d["text"]:
            return d["text"]
        msgs = d.get("messages")
        if isinstance(msgs, list):
            return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in msgs if isinstance(m, dict))
    return json.dumps(d, ensure_ascii=False, indent=1)


def sample_rows(store: RunStore, run: str | None = None, memo: JudgmentKeys | None = None,
                ) -> tuple[list[str], list[SampleRow]]:
    """(judge names, one row per planned item) of one run store; `run` names the run in a merged report; `memo`:
    the judgment keys of the run that just wrote the store (a finished run's reports hash none again)."""
    from ptst.collect import judgment_keys, run_judges

    judges = run_judges(store)
    # Every cell's items, then their generations and each judge's verdicts in one read each for the whole run (a
    # table scan for a large one), as `ptst.collect.item_records` does.
    cells = [(d, store.cell_items(key), store.cell_categories(key)) for key, d in store.cells()]
    gens = store.generations(g for _, items, _ in cells for g, _, _ in items)
    responses = {g: r for g, (_, r) in gens.items()}
    safety_items = [it for d, items, _ in cells if d["kind"] == "safety" for it in items]
    per_judge: list[dict[str, tuple[bool | None, int | None, str | None]]] = []
    for name, version in judges if safety_items else []:
        jk = judgment_keys(name, version, safety_items, responses, memo)
        got = store.judgments(jk.values())
        per_judge.append({g: (v.unsafe, v.score, v.raw) for g, k in jk.items() if (v := got.get(k)) is not None})
    rows: list[SampleRow] = []
    for d, items, categories in cells:
        cell = SampleCell(run, d["backend"], d["base_model"], d["train_template"], d["test_template"], d["seed"],
                          d.get("checkpoint"), d.get("safety_mix"))
        judged = per_judge if d["kind"] == "safety" else []
        for idx, ((g, q, ref), cat) in enumerate(zip(items, categories, strict=True)):
            prompt, response = gens.get(g, (None, None))
            rows.append(SampleRow(cell, d["dataset"], d["kind"], cat, idx, q, prompt_text(prompt), response, ref,
                                  [pj.get(g) for pj in judged]))
    return [name for name, _ in judges], rows


def _escape_js(text: str) -> str:
    """JSON that is also safe inside an HTML script element: `<` (so never `</script>`), U+2028 and U+2029."""
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def samples_data(judges: Sequence[str], rows: Iterable[SampleRow], safety_templates: Iterable[str] = ()
                 ) -> dict[str, Any]:
    """The compact JSON object the viewer reads (documented field by field in `ptst.report.sampleview`);
    `safety_templates` mark each cell PTST, same-template or neither, as the report's grids do."""
    from ptst.report.grids import cell_mark

    safe = frozenset(safety_templates)
    strings: dict[str, int] = {}

    def s(text: str | None) -> int:
        if text is None:
            return -1
        return strings.setdefault(text, len(strings))

    cells: dict[SampleCell, int] = {}
    benchmarks: dict[str, int] = {}
    out_rows = []
    for r in rows:
        c = cells.setdefault(r.cell, len(cells))
        b = benchmarks.setdefault(r.benchmark, len(benchmarks))
        verdicts = [None if v is None else [None if v[0] is None else int(v[0]), v[1], s(v[2])] for v in r.verdicts]
        out_rows.append([c, b, r.category, r.index, s(r.query), s(r.prompt), s(r.response), s(r.reference),
                         verdicts if r.kind == "safety" else None])
    return {
        "format": FORMAT,
        "judges": list(judges),
        "cells": [{"label": c.label, "run": c.run, "backend": c.backend, "base_model": c.base_model,
                   "train_template": c.train_template, "test_template": c.test_template, "seed": c.seed,
                   "checkpoint": c.checkpoint, "safety_mix": c.safety_mix,
                   "mark": cell_mark(safe, c.train_template, c.test_template)} for c in cells],
        "benchmarks": list(benchmarks),
        "fields": ["cell", "benchmark", "category", "index", "query", "prompt", "response", "reference", "verdicts"],
        "strings": list(strings),
        "rows": out_rows,
    }


def samples_js(judges: Sequence[str], rows: Iterable[SampleRow], safety_templates: Iterable[str] = ()) -> str:
    data = json.dumps(samples_data(judges, rows, safety_templates), ensure_ascii=False, separators=(",", ":"))
    return f"window.{SAMPLES_VAR}={_escape_js(data)};\n"


def parse_samples_js(text: str) -> dict[str, Any]:
    """The data object of a samples.js (for tests and tools): the inverse of `samples_js`."""
    prefix = f"window.{SAMPLES_VAR}="
    body = text.strip()
    if not body.startswith(prefix) or not body.endswith(";"):
        raise ValueError(f"not a ptst {SAMPLES_FILE}")
    return json.loads(body[len(prefix):-1])

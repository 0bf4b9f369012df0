"""Load a `DatasetRef` into `Example`s: from a file, from a local copy of a registry dataset, or from the hub.

Resolution order for a registry name (first hit wins):
1. each data folder in `data_dirs` (the spec's `data_dir`), then `$PTST_DATA_DIR`, looking for
   `<name>/<split>.{jsonl,json,csv,parquet}` in the hub schema and then the registry's known layouts
   (e.g. `advbench/harmful_behaviors.csv`);
2. the Hugging Face hub through `datasets.load_dataset` (extra `hub`), which offline (`HF_HUB_OFFLINE=1`) serves
   only what is in the local cache.
If none works, one `DataError` line says what was tried and what to do.

Every row is checked; a bad row stops the load with `file:line: problem; fix` (1-based lines for jsonl/csv/txt,
`file[i]` with the 0-based index for JSON arrays, parquet and hub rows), because a silently skipped row changes
what a benchmark measures.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from ptst.data.download import download, download_dir
from ptst.data.readers import Row, read_rows
from ptst.data.registry import DatasetInfo, DatasetRef, LocalFile
from ptst.errors import DataError, MissingExtra, first_line, require, surrogate_problem
from ptst.keys import content_hash
from ptst.metrics.arc import arc_row
from ptst.progress import log

# Field names tried, in order, when a path dataset does not name its fields.
DEFAULT_PROMPT_FIELDS: tuple[str, ...] = ("prompt", "instruction", "question", "query", "goal")
DEFAULT_ANSWER_FIELDS: tuple[str, ...] = ("answer", "response", "output", "completion")



@dataclass(frozen=True)
class Example:
    """One dataset row in ptst's neutral form.

    `source` points back to the row (`/data/test.jsonl:12`, `/data/x.json[3]`), so any number in a report can be
    traced to its input. `meta` keeps the row's other scalar fields (DirectHarm4's `category`, OpenOrca's
    `system_prompt`); it is excluded from the hash so examples stay usable as set members and dict keys.
    """

    prompt: str
    answer: str | None
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)


# ------------------------------------------------------------------------------------------------- rows -> examples


@dataclass(frozen=True)
class Fields:
    """Which record fields make an Example (resolved per load)."""

    prompt: str
    answer: str | None = None
    context: str | None = None


def _infer_fields(first: dict[str, Any], where: str, prompt: str | None, answer: str | None) -> Fields:
    """For a file that does not name its fields, pick the first conventional name present in the first record."""
    p = prompt or next((f for f in DEFAULT_PROMPT_FIELDS if f in first), None)
    a = answer or next((f for f in DEFAULT_ANSWER_FIELDS if f in first and f != p), None)
    if p is None:
        raise DataError(
            f"{where}: no prompt field among {', '.join(DEFAULT_PROMPT_FIELDS)} "
            f"(fields: {', '.join(first) or '(none)'}); set prompt_field"
        )
    return Fields(p, a)


def _text(value: Any, where: str, name: str, role: str) -> str | None:
    """A usable text value, None if absent/empty; numbers are accepted for answers (`"answer": 42`)."""
    if value is None:
        return None
    if isinstance(value, str):
        bad = surrogate_problem(value)
        if bad is not None:  # it would crash the content hash, the store and the API request later
            raise DataError(f"{where}: {role} field {name!r} {bad}")
        return value if value.strip() else None
    if role == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{where}: answer field {name!r} must be text or a finite number, got {value}")
        return str(value)
    raise DataError(f"{where}: {role} field {name!r} must be text, got {type(value).__name__}")


def rows_to_examples(
    rows: Iterable[Row],
    fields: Fields | None,
    *,
    label: str,
    require_answer: bool = False,
    limit: int | None = None,
    prompt_field: str | None = None,
    answer_field: str | None = None,
) -> list[Example]:
    """Validate records and turn them into Examples; stops after `limit` rows.

    `fields` is fixed for registry datasets; for files it is None and is inferred from the first record (or taken
    from `prompt_field`/`answer_field`). `label` names the dataset in messages that concern it as a whole.
    """
    out: list[Example] = []
    for where, rec in islice(rows, limit):
        if fields is None:
            fields = _infer_fields(rec, where, prompt_field, answer_field)
        if require_answer and fields.answer is None:
            raise DataError(
                f"{label}: no answer field (fields: {', '.join(rec)}); set answer_field — "
                "training data and tasks need answers"
            )
        if fields.prompt not in rec:
            raise DataError(
                f"{where}: prompt field {fields.prompt!r} is missing (fields: {', '.join(rec) or '(none)'}); "
                "set prompt_field"
            )
        prompt = _text(rec[fields.prompt], where, fields.prompt, "prompt")
        if prompt is None:
            raise DataError(f"{where}: prompt field {fields.prompt!r} is empty; fill it or remove the row")
        if fields.context is not None:
            context = _text(rec.get(fields.context), where, fields.context, "context")
            if context is not None:
                prompt = f"{prompt}\n\n{context}"
        answer = None
        if fields.answer is not None:
            if fields.answer not in rec and require_answer:
                raise DataError(
                    f"{where}: answer field {fields.answer!r} is missing (fields: {', '.join(rec)}); set answer_field"
                )
            answer = _text(rec.get(fields.answer), where, fields.answer, "answer")
            if answer is None and require_answer:
                raise DataError(f"{where}: answer field {fields.answer!r} is empty; fill it or remove the row")
        used = {fields.prompt, fields.answer, fields.context}
        meta = {k: v for k, v in rec.items() if k not in used and isinstance(v, (str, int, float, bool))}
        for k, v in meta.items():
            bad = surrogate_problem(k) or (surrogate_problem(v) if isinstance(v, str) else None)
            if bad is not None:  # kept beside the example (a category): hashed and stored like its text
                raise DataError(f"{where}: field {k!r} {bad}")
        out.append(Example(prompt=prompt, answer=answer, source=where, meta=meta))
    if not out:
        raise DataError(f"{label}: no rows (empty); give a file with at least one record")
    return out


# ----------------------------------------------------------------------------------------------------------- load


def load_file(
    path: Path,
    *,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    require_answer: bool = False,
    limit: int | None = None,
) -> list[Example]:
    """Load a local data file (see `read_rows` for formats); fields default to conventional names."""
    return rows_to_examples(
        read_rows(path),
        None,
        label=str(path),
        require_answer=require_answer,
        limit=limit,
        prompt_field=prompt_field,
        answer_field=answer_field,
    )


def search_dirs(data_dirs: Sequence[Path]) -> list[Path]:
    """The data folders to search: the given ones, then `$PTST_DATA_DIR`, without repeats."""
    dirs = [Path(d) for d in data_dirs]
    env = os.environ.get("PTST_DATA_DIR")
    if env:
        dirs.append(Path(env))
    seen: set[Path] = set()
    out = []
    for d in dirs:
        key = d.expanduser().resolve()
        if key not in seen:
            seen.add(key)
            out.append(d.expanduser())
    return out


def _renamed(rows: Iterable[Row], rename: Mapping[str, str]) -> Iterator[Row]:
    for where, rec in rows:
        yield where, {rename.get(k, k): v for k, v in rec.items()} if rename else rec


ROW_TRANSFORMS: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {"arc-choices": arc_row}
"""A registry entry's `row_transform` -> (location, record) -> record, applied before fields are read."""


def _transformed(rows: Iterable[Row], info: DatasetInfo) -> Iterable[Row]:
    if info.row_transform is None:
        return rows
    transform = ROW_TRANSFORMS[info.row_transform]
    return ((where, transform(where, rec)) for where, rec in rows)


def _registry_fields(ref: DatasetRef, info: DatasetInfo) -> Fields:
    return Fields(
        prompt=ref.prompt_field or info.prompt_field,
        answer=ref.answer_field or info.answer_field,
        context=None if ref.prompt_field else info.context_field,
    )


def _registry_parts(ref: DatasetRef, require_answer: bool) -> tuple[DatasetInfo, str, Fields]:
    info = ref.info
    split = ref.resolved_split()
    assert info is not None and split is not None  # guaranteed by DatasetRef validation
    fields = _registry_fields(ref, info)
    if require_answer and fields.answer is None:
        raise DataError(
            f"dataset {info.name!r} ({split}) has no answers "
            f"({info.kind} dataset{': ' + info.metric_note if info.metric_note else ''}); "
            "use it as a safety benchmark, or set answer_field"
        )
    return info, split, fields


def locate(ref: DatasetRef, data_dirs: Sequence[Path] = ()) -> tuple[Path, LocalFile] | None:
    """The local copy of a registry dataset that `load` reads (first data folder, first known layout, then a pinned
    download already fetched), or None."""
    info, split = ref.info, ref.resolved_split()
    if info is None or split is None:
        return None
    for d in search_dirs(data_dirs):
        for cand in info.local_candidates(split):
            if (d / cand.path).is_file():
                return d / cand.path, cand
    if info.url is not None and info.local:
        cached = download_dir() / info.local[0].path
        if cached.is_file():
            return cached, info.local[0]
    return None


def load(
    ref: DatasetRef,
    *,
    data_dirs: Sequence[Path] = (),
    cache_dir: Path | None = None,
    require_answer: bool = False,
) -> list[Example]:
    """Load a dataset: a file (`ref.path`), else a local copy of a registry dataset, else its pinned download, else
    the hub; then its `holdout` part and its `limit`.

    `require_answer` is for training data and tasks: every row must have a non-empty answer.
    """
    local = load_local(ref, data_dirs=data_dirs, require_answer=require_answer, announce=True)
    if local is not None:
        return local
    info, split, fields = _registry_parts(ref, require_answer)
    if info.hub_id is None and info.url is not None:
        download(info)
        local = load_local(ref, data_dirs=data_dirs, require_answer=require_answer, announce=True)
        assert local is not None
        return local
    hub_problem = _hub_problem(info)
    if hub_problem is None:
        try:
            hub_rows = _hub_rows(info, ref.config or info.config, split, cache_dir)
        except _HubUnavailable as e:
            hub_problem = str(e)
        else:
            label = f"dataset {info.name!r} ({split})"
            limit = None if ref.holdout is not None else ref.limit
            rows = _transformed(hub_rows, info)
            examples = rows_to_examples(rows, fields, label=label, require_answer=require_answer, limit=limit)
            return holdout_part(examples, ref)
    raise DataError(_not_found_message(info, split, search_dirs(data_dirs), info.local_candidates(split), hub_problem))


def load_local(
    ref: DatasetRef, *, data_dirs: Sequence[Path] = (), require_answer: bool = False, announce: bool = False
) -> list[Example] | None:
    """`load` restricted to this machine (a file, a local copy, a pinned download already fetched): None when the
    data would have to come from the network."""
    limit = None if ref.holdout is not None else ref.limit  # the split is over every row, then the limit applies
    examples = _load_here(ref, data_dirs, require_answer, limit, announce=announce)
    return None if examples is None else holdout_part(examples, ref)


def holdout_part(examples: list[Example], ref: DatasetRef) -> list[Example]:
    """The `holdout` part of a dataset's rows (all of them without one), then its first `limit`."""
    h = ref.holdout
    if h is not None:
        if h.n >= len(examples):
            raise DataError(f"dataset {ref.display_name()!r}: holdout n={h.n} leaves nothing of its {len(examples)} "
                            "rows; lower n")
        held = set(_ranked(len(examples), h.seed)[: h.n])
        examples = [e for i, e in enumerate(examples) if (i in held) == (h.part == "heldout")]
    return examples[: ref.limit] if ref.limit is not None else examples


def _load_here(
    ref: DatasetRef, data_dirs: Sequence[Path], require_answer: bool, limit: int | None, *, announce: bool
) -> list[Example] | None:
    """The examples of a dataset that is on this machine (a path, or a registry dataset's local copy); None when it
    would have to come from the network."""
    if ref.path is not None:
        return load_file(
            Path(ref.path),
            prompt_field=ref.prompt_field,
            answer_field=ref.answer_field,
            require_answer=require_answer,
            limit=limit,
        )
    info, _, fields = _registry_parts(ref, require_answer)
    found = locate(ref, data_dirs)
    if found is None:
        return None
    p, cand = found
    if announce and cand.note:
        log(f"note: {info.name}: {cand.note}")
    rows = _transformed(_renamed(read_rows(p, cand.columns), cand.rename), info)
    return rows_to_examples(rows, fields, label=str(p), require_answer=require_answer, limit=limit)


PREVIEW_ROWS = 100
"""Rows `preview` reads: enough to catch a wrong field name or format, few enough to stay instant on any file."""


def preview(
    ref: DatasetRef, *, data_dirs: Sequence[Path] = (), require_answer: bool = False, rows: int = PREVIEW_ROWS
) -> list[Example] | None:
    """The first `rows` examples exactly as `load` reads them, for checks before a run (`ptst validate`).

    Returns None when the data would come from the Hugging Face hub, which cannot be checked offline; raises the
    DataError `load` would raise for anything it can see here: a missing file, a missing field, a bad row among the
    first ones, a registry dataset with neither a local copy nor a way to reach the hub.
    """
    limit = min(ref.limit, rows) if ref.limit is not None else rows
    local = _load_here(ref, data_dirs, require_answer, limit, announce=False)
    if local is not None:
        return local
    info, split, _ = _registry_parts(ref, require_answer)
    if info.hub_id is None and info.url is not None:
        return None  # a pinned download: fetched (and checked) when the run starts, not by a check
    hub_problem = _hub_problem(info)
    if hub_problem is None and importlib.util.find_spec("datasets") is None:
        hub_problem = "the 'datasets' package is not installed (pip install 'ptst[hub]')"
    if hub_problem is not None:
        raise DataError(
            _not_found_message(info, split, search_dirs(data_dirs), info.local_candidates(split), hub_problem)
        )
    return None


def _not_found_message(
    info: DatasetInfo, split: str, dirs: Sequence[Path], candidates: Sequence[LocalFile], hub_problem: str
) -> str:
    looked = ", ".join(c.path for c in candidates)
    where = (
        "in " + ", ".join(f"{d}" + ("" if d.is_dir() else " (missing)") for d in dirs)
        if dirs
        else "anywhere (no data_dir or PTST_DATA_DIR set)"
    )
    todo = "set data_dir or PTST_DATA_DIR to a folder holding one of those files, or give {path: ...}"
    if info.hub_id is not None:
        todo += ", or load it from the hub (online, with the 'hub' extra)"
    return (
        f"dataset {info.name!r} ({split}) not found: no local copy {where} (looked for {looked}); "
        f"hub: {hub_problem}. To fix: {todo}"
    )


class _HubUnavailable(Exception):
    """The hub could not serve the dataset; the message says why (becomes part of the DataError)."""


def _hub_problem(info: DatasetInfo) -> str | None:
    if info.hub_id is None:
        return f"not on the Hugging Face hub (get it from {info.origin})"
    return None


def _hub_rows(info: DatasetInfo, config: str | None, split: str, cache_dir: Path | None) -> Iterator[Row]:
    """Load from the hub (or its local cache when offline) with `datasets`, imported only here."""
    assert info.hub_id is not None
    try:
        datasets = require("datasets", f"loading {info.name!r} from the Hugging Face hub", "hub")
    except MissingExtra as e:
        raise _HubUnavailable("the 'datasets' package is not installed (pip install 'ptst[hub]')") from e
    try:
        ds = datasets.load_dataset(
            info.hub_id, config, split=split, cache_dir=str(cache_dir) if cache_dir is not None else None
        )
    except Exception as e:
        offline = " (offline: HF_HUB_OFFLINE is set and it is not in the local cache)" if _offline() else ""
        raise _HubUnavailable(f"{info.hub_id} could not be loaded{offline}: {first_line(e, 200)}") from e
    prefix = f"hf://{info.hub_id}" + (f"/{config}" if config else "") + f"/{split}"
    return ((f"{prefix}[{i}]", dict(rec)) for i, rec in enumerate(ds))


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


# --------------------------------------------------------------------------------------------- hashing & sampling


def data_hash(examples: Sequence[Example]) -> str:
    """A stable content hash of the prompts and answers, in order (the training data's part of a job key).

    `source` and `meta` are left out: moving the same data to another folder must not retrain anything.
    """
    return content_hash([[e.prompt, e.answer] for e in examples])


def sample(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """A deterministic subsample of `n` examples, returned in their original order.

    Rows are ranked by sha256(seed, index) rather than with `random`, so the choice is identical on every Python
    version and platform, and a smaller `n` with the same seed picks a subset of a larger one.
    """
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    if n > len(examples):
        raise DataError(f"asked for a sample of {n} examples but the dataset has only {len(examples)}; lower n")

    chosen = sorted(_ranked(len(examples), seed)[:n])
    return [examples[i] for i in chosen]


def _ranked(n: int, seed: int) -> list[int]:
    """Indices 0..n-1 ordered by sha256(seed, index): the seeded order `sample` and `holdout` take rows in."""
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())

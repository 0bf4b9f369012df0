"""Reading data files into raw records: jsonl/ndjson, json, csv/tsv, parquet and txt.

Each reader yields `(location, record)` pairs; the location (`file:line` for line-based formats, `file[i]` for JSON
arrays and parquet) goes into every message and into `Example.source`. A data file is user input, so whatever it
holds (wrong encoding, truncation, a line of a gigabyte, binary junk, no read permission) ends as rows or one
`DataError` naming the file, the row and what to do — never a traceback. Turning records into Examples is
`loaders.py`'s job.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ptst.data.registry import DATA_EXTENSIONS
from ptst.errors import DataError, first_line
from ptst.spec_io import HUGE_INT, is_huge_int, missing_file_problem

Row = tuple[str, dict[str, Any]]  # (location for messages and Example.source, the record)


def read_rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[Row]:
    """Yield the records of a data file, lazily where the format allows (so `limit` reads only what it needs).

    jsonl/ndjson: one object per line. json: an array, an object holding one (`{"data": [...]}`), or JSON lines
    misnamed `.json`; array items may be plain strings (taken as `prompt`). csv/tsv: a header row, unless `columns`
    names the columns of a header-less file. parquet: via pyarrow or pandas. txt: one prompt per non-empty line.

    Whatever the file holds (wrong encoding, truncation, a line of a gigabyte, binary junk, no read permission),
    the result is rows or one `DataError` naming the file, the row and what to do.
    """
    if not path.exists():
        problem = missing_file_problem(path)
        hint = "check the path (relative paths are relative to the spec file)" if problem == "file not found" else ""
        raise DataError(f"{path}: {problem}" + (f"; {hint}" if hint else ""))
    if not path.is_file():
        raise DataError(f"{path}: not a file; give the path of a data file ({', '.join(DATA_EXTENSIONS)})")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",", columns)
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".txt":
        return _read_txt(path)
    raise DataError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl, .json, .csv, .tsv, .parquet or .txt"
    )


MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest line read (a record, or a JSON file's whole text); longer is not a dataset row but a broken file, and
reading it whole could exhaust memory."""
MAX_JSON_BYTES = 2 * 1024 * 1024 * 1024
"""Largest .json file parsed whole (arrays cannot be streamed); bigger data belongs in .jsonl or .parquet."""


def _cannot_read(path: Path, e: OSError) -> DataError:
    return DataError(f"{path}: cannot read the file ({e.strerror or type(e).__name__}); check its permissions")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its ending) of a UTF-8 file (a BOM is dropped), decoded line by line so an
    encoding error names its line and exact byte offset, and bounded so a huge line is an error, not a crash."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise _cannot_read(path, e) from e
    with f:
        offset = 0
        n = 0
        while True:
            try:
                raw = f.readline(MAX_LINE_BYTES + 1)
            except OSError as e:
                raise _cannot_read(path, e) from e
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(
                    f"{path}:{n}: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB; the file is broken or not "
                    "line-based text (jsonl/csv/txt) — check that it is the right file"
                )
            start = 3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{n}: not UTF-8 text (byte 0x{raw[start + e.start]:02x} at byte offset "
                    f"{offset + start + e.start} is {e.reason}); re-save the file as UTF-8"
                ) from e
            offset += len(raw)
            yield n, line


def _read_jsonl(path: Path) -> Iterator[Row]:
    for n, line in _text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            cut = not line.endswith("\n") or e.pos >= len(line.rstrip()) or e.msg.startswith("Unterminated")
            hint = f"column {e.colno}" + ("; the line is cut short (a truncated file?)" if cut else "")
            raise DataError(f"{where}: invalid JSON ({e.msg}, {hint}); fix or remove the line") from e
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply to read; fix or remove the line") from None
        except ValueError as e:
            if is_huge_int(e):
                raise DataError(f"{where}: {HUGE_INT}, or quote it as text") from e
            raise
        if not isinstance(obj, dict):
            raise DataError(
                f"{where}: expected a JSON object per line, got {type(obj).__name__}; write each row as "
                '{"prompt": ..., "answer": ...}'
            )
        yield where, obj


def _read_json(path: Path) -> Iterator[Row]:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise _cannot_read(path, e) from e
    if size > MAX_JSON_BYTES:
        raise DataError(f"{path}: {size:,} bytes is too large to parse as one JSON document; convert it to .jsonl")
    text = "".join(line for _, line in _text_lines(path))
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON lines saved as .json (common for hub exports)
            yield from _read_jsonl(path)
            return
        ends_early = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated")
        cut = " (the file ends early: truncated?)" if ends_early else ""
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno}){cut}; fix the file") from e
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read; a dataset is an array of flat records") from None
    except ValueError as e:
        if is_huge_int(e):
            raise DataError(f"{path}: {HUGE_INT}, or quote it as text") from e
        raise
    items = _json_records(path, data)
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise DataError(
                f"{where}: expected a JSON object or string, got {type(item).__name__}; write each record as "
                '{"prompt": ..., "answer": ...}'
            )
        yield where, item


def _json_records(path: Path, data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if isinstance(data.get("data"), list):
            return data["data"]
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:
            return data[lists[0]]
        raise DataError(
            f'{path}: expected a JSON array of records or an object with one array (like {{"data": [...]}}); '
            f"found keys {', '.join(map(repr, data)) or '(none)'}"
        )
    raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")


def _read_csv(path: Path, delimiter: str, columns: Sequence[str] | None) -> Iterator[Row]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    # strict: an unclosed quote at the end (a truncated file) is an error, not a value that swallows the rest.
    reader = csv.reader((line for _, line in _text_lines(path)), delimiter=delimiter, strict=True)
    header = list(columns) if columns is not None else None
    start = 1
    while True:
        where = f"{path}:{start}"
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{where}: malformed {kind} ({e}); check the quoting of this row") from e
        start = reader.line_num + 1
        if not any(c.strip() for c in record):
            continue  # a blank line
        if header is None:
            header = [h.strip() for h in record]
            dup = sorted({h for h in header if header.count(h) > 1 or not h})
            if dup:
                raise DataError(f"{where}: header has empty or repeated column names {dup}; fix the header row")
            continue
        if len(record) != len(header):
            raise DataError(
                f"{where}: {len(record)} values but {len(header)} columns ({', '.join(header)}); "
                "quote values that contain the delimiter"
            )
        yield where, dict(zip(header, record, strict=True))


def _read_txt(path: Path) -> Iterator[Row]:
    for n, line in _text_lines(path):
        if line.strip():
            yield f"{path}:{n}", {"prompt": line.strip()}


def _read_parquet(path: Path) -> Iterator[Row]:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise _cannot_read(path, e) from e
    try:
        import pyarrow.parquet as pq

        def read() -> list[dict[str, Any]]:
            return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    except ImportError:
        try:
            import pandas as pd

            def read() -> list[dict[str, Any]]:
                return pd.read_parquet(path).to_dict("records")  # type: ignore[no-any-return]
        except ImportError as e:
            raise DataError(f"{path}: reading parquet needs pyarrow: pip install pyarrow (or 'ptst[hub]')") from e
    try:
        records = read()
    except Exception as e:
        first = first_line(e, 200)
        what = "not a parquet file" if magic != b"PAR1" else "a damaged or truncated parquet file"
        raise DataError(f"{path}: {what} ({first}); re-export it, or give the data as .jsonl or .csv") from e
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{path}[{i}]: expected a record with named columns, got {type(rec).__name__}")
        yield f"{path}[{i}]", rec

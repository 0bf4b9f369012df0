"""Reading a spec file into plain Python data, safely: whatever the file holds, the result is data or a SpecError.

A spec file comes from a user (or a script, or a corrupted disk), so everything here assumes it may be hostile:
not UTF-8, binary, empty, a directory, unreadable, nested 10,000 levels deep, a YAML alias bomb, or a mapping that
says the same key twice. Each of those ends as one `SpecError` line naming the file and the place (byte offset,
line) and what to do — never a traceback, because a user error is not a bug (exit 2, see ptst.errors).

Duplicate keys are errors, not "last one wins" (PyYAML's and json's default): a spec that says `epochs: 1` and later
`epochs: 3` has a mistake in it, and silently picking one runs an experiment the user did not mean.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from ptst.errors import SpecError, surrogate_problem

MAX_SPEC_BYTES = 1024 * 1024
"""A spec is a few kilobytes; anything past this is not a spec (validating a 10 MB one took 12-25 s, and reading it
whole could exhaust memory)."""
MAX_DEPTH = 64
"""Deepest nesting accepted; a real spec nests about six levels (eval.generation...)."""
MAX_NODES = 200_000
"""Values in the parsed spec, counting every use of a YAML alias (so an alias bomb is refused, not expanded)."""
INT_LIMIT = 2**63 - 1
"""Integers must fit the run store's 64-bit columns; the fields themselves have tighter bounds (ptst.types)."""

SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def _fail(path: str | Path, problem: str) -> SpecError:
    return SpecError(str(path), [problem])


def is_huge_int(e: ValueError) -> bool:
    """Python refuses to convert integers of over 4,300 digits from text (CVE-2020-10735); the parsers raise that as a
    plain ValueError, which is a user's input, not a bug."""
    return "integer string conversion" in str(e)


HUGE_INT = "an integer with more than 4,300 digits, which no field accepts; write a number that fits the field"


def missing_file_problem(path: Path) -> str:
    """Why a path that does not exist as a file is missing, in words: a symlink loop or a dangling link is not
    'file not found' (the user would look for a file that is there)."""
    try:
        path.stat()
    except OSError as e:
        import errno

        if e.errno == errno.ELOOP:
            return "is a symbolic link loop (a link that points back to itself); point it at the real file"
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist; fix the link"
    return "file not found"


# ------------------------------------------------------------------------------------------------------- the bytes


def read_spec_text(path: Path) -> str:
    """The spec file's text: a readable regular file of at most MAX_SPEC_BYTES, UTF-8 (an optional BOM is dropped),
    not binary, not empty."""
    if path.is_dir():
        raise _fail(path, "is a directory, not a spec file; give the path of a .yaml, .toml or .json spec")
    if not path.exists():
        raise _fail(path, missing_file_problem(path))
    if not path.is_file():
        raise _fail(path, "is not a regular file; give the path of a .yaml, .toml or .json spec")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise _fail(path, f"unknown spec format {suffix or '(no extension)'!r}; use .yaml, .yml, .toml or .json")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise _fail(path, f"cannot read the file ({e.strerror or type(e).__name__}); check its permissions") from e
    if len(data) > MAX_SPEC_BYTES:
        raise _fail(path, f"file is larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB; a spec is a few kilobytes "
                          "(give data as data files named in the spec, not inline)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise _fail(path, f"binary data (a NUL byte at byte offset {nul}); a spec is a YAML, TOML or JSON text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _fail(
            path,
            f"not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} (line {line}) is {e.reason}; "
            "re-save the file as UTF-8",
        ) from e
    if not text.strip():
        raise _fail(path, "the file is empty; write a spec (name, backends, eval...) — see the README's spec reference")
    return text


# ---------------------------------------------------------------------------------------------------------- YAML


class _DuplicateKey(Exception):
    """A duplicate key was found; `message` is the finished problem line (YAML) or just the key (JSON, until the
    object holding it adds the lines)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _DuplicateJsonKey(_DuplicateKey):
    """A JSON duplicate whose message already names the lines (so outer objects pass it on untouched)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping naming the same key twice is an error (naming the key and both
    lines) instead of the later value silently winning. Merge keys (`<<: *base`) still override as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base constructor reports it
                continue
            if first is not None:
                raise _DuplicateKey(f"line {line}: duplicate key {key!r} (first at line {first}); keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow (control characters...)
        return f"byte offset {e.position}: character {e.character!r} is not allowed in YAML; remove it"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}invalid YAML ({problem})"


def parse_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # UniqueKeyLoader is a SafeLoader
    except _DuplicateKey as e:
        raise _fail(path, e.message) from None
    except yaml.YAMLError as e:
        raise _fail(path, _yaml_error(e)) from e
    except ValueError as e:
        if is_huge_int(e):
            raise _fail(path, HUGE_INT) from e
        raise


# ---------------------------------------------------------------------------------------------------------- JSON


def _json_decoder() -> json.JSONDecoder:
    """A decoder that refuses duplicate keys and reports the line of both.

    It uses the pure-Python scanner (the C one ignores `parse_object`), which lets each object know where it starts;
    a spec is small, so the speed does not matter.
    """
    decoder = json.JSONDecoder(object_pairs_hook=_unique_pairs)

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):  # type: ignore[no-untyped-def]
        s, start = s_and_end
        try:
            return json.decoder.JSONObject(  # type: ignore[attr-defined]  # the stdlib's own object scanner
                s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo)
        except _DuplicateJsonKey:
            raise
        except _DuplicateKey as e:
            raise _DuplicateJsonKey(_json_duplicate_lines(s, start, e.message, scan_once, strict)) from None

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _json_duplicate_lines(s: str, pos: int, key: str, scan_once: Any, strict: bool) -> str:
    """Walk the object's keys from `pos` (just past its `{`) to find the lines of the first two uses of `key`."""
    ws = json.decoder.WHITESPACE.match  # type: ignore[attr-defined]
    lines: list[int] = []
    try:
        while len(lines) < 2:
            pos = ws(s, pos).end()
            if s[pos] != '"':
                break
            k, end = json.decoder.scanstring(s, pos + 1, strict)  # type: ignore[attr-defined]
            if k == key:
                lines.append(s.count("\n", 0, pos) + 1)
            pos = ws(s, end).end() + 1  # past ':'
            _, pos = scan_once(s, ws(s, pos).end())
            pos = ws(s, pos).end()
            if s[pos] == ",":
                pos += 1
    except (IndexError, ValueError, StopIteration, _DuplicateKey):
        pass
    if len(lines) == 2:
        return f"line {lines[1]}: duplicate key {key!r} (first at line {lines[0]}); keep one of them"
    return f"duplicate key {key!r} in one object; keep one of them"


def parse_json(path: Path, text: str) -> Any:
    try:
        return _json_decoder().decode(text)
    except _DuplicateKey as e:
        raise _fail(path, e.message) from None
    except json.JSONDecodeError as e:
        raise _fail(path, f"line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from e
    except ValueError as e:
        if is_huge_int(e):
            raise _fail(path, HUGE_INT) from e
        raise


# ---------------------------------------------------------------------------------------------------------- TOML


def parse_toml(path: Path, text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the same parser, from PyPI (a dependency there)
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # duplicate keys are refused by tomllib itself
        raise _fail(path, f"invalid TOML ({e})") from e
    except ValueError as e:
        if is_huge_int(e):
            raise _fail(path, HUGE_INT) from e
        raise


# ------------------------------------------------------------------------------------------------- the parsed data


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_:.<>-]*")


def field_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """`train.templates[1]`: the one-line name of a place in the spec. A key that is not a plain name (a newline, a
    space, an empty string) is shown as its repr, so a message stays one line and says exactly which key."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = part if isinstance(part, str) and _PLAIN_KEY.fullmatch(part) else repr(part)
            out += ("." if out else "") + text
    return out or "(top level)"


def check_plain_data(source: str | Path, data: Any) -> list[str]:
    """Vet parsed data before anything else reads it. Structure that would hurt the reader (nesting deeper than
    MAX_DEPTH, more than MAX_NODES values: alias bombs) raises at once; values no field accepts (NaN/infinity,
    integers beyond 64 bits, which validate in an unbounded field and then break the store) are returned as
    `path: problem` lines, in document order, to be reported with the other problems. Iterative, so no depth can
    overflow Python's stack here."""
    problems: list[str] = []
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(data, (), 0)]
    nodes = 0
    while stack:
        value, where, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _fail(source, f"more than {MAX_NODES:,} values (YAML aliases count each use); that is not a spec")
        if depth > MAX_DEPTH:
            raise _fail(source, f"{field_path(where)}: nested deeper than {MAX_DEPTH} levels; that is not a spec")
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{field_path(where)}: {value} is not allowed; give a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            problems.append(f"{field_path(where)}: integer {_short(value)} is out of range (at most 2**63-1)")
        elif isinstance(value, str):
            bad = surrogate_problem(value)
            if bad is not None:  # a label, base_url, system prompt...: it would crash a print, a hash or a request
                problems.append(f"{field_path(where)}: the text {bad}")
        elif isinstance(value, dict):
            for k in value:
                bad = surrogate_problem(k) if isinstance(k, str) else None
                if bad is not None:
                    problems.append(f"{field_path((*where, k))}: the key {bad}")
            stack.extend(reversed([(v, (*where, k), depth + 1) for k, v in value.items()]))
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(reversed([(v, (*where, i), depth + 1) for i, v in enumerate(value)]))
    return problems


def _short(n: int) -> str:
    s = str(n) if n.bit_length() < 4000 else f"with {int(n.bit_length() * 0.30103)} digits"
    return s if len(s) <= 24 else s[:10] + "..." + f" ({len(s)} digits)"


def parse_spec_file(path: Path) -> Any:
    """Parse a spec file (by extension: YAML, TOML or JSON) into plain data, or raise one SpecError line."""
    text = read_spec_text(path)
    suffix = path.suffix.lower()
    parse = {".yaml": parse_yaml, ".yml": parse_yaml, ".json": parse_json, ".toml": parse_toml}[suffix]
    try:
        data = parse(path, text)
    except RecursionError:
        raise _fail(path, "nesting is too deep to parse; that is not a spec") from None
    if data is None:
        raise _fail(path, "the file holds no spec (only comments or blank lines); write name, backends, eval...")
    return data

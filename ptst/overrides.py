"""`--set KEY=VALUE`: change a spec from the command line without editing its file.

Overrides are applied to the *raw* parsed spec (plain dicts and lists), before validation, so an override is checked
exactly like the same value written in the file: an unknown key or a bad value is the same one-line problem with its
field path (exit 2). Paths are dotted, with list indexes written either way: `backends[0].model` or
`backends.0.model`. Values are parsed as YAML (`32` is a number, `true` a bool, `[a, b]` a list, `{kind: keyword}` a
mapping; quote a string that would read as something else: `name='"123"'`). Missing mappings on the way are created,
so `--set train.hyperparameters.epochs=3` works on a spec that never wrote `hyperparameters`. The overrides are
recorded with the run (results.json `overrides`, the report's spec section) so a run says how it differed from its
file.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import yaml

from ptst.errors import SpecError, UsageError
from ptst.spec_io import HUGE_INT, UniqueKeyLoader, _DuplicateKey, field_path, is_huge_int

_SEGMENT = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")
_INDEX = re.compile(r"-?\d+")


def parse_path(path: str) -> tuple[str | int, ...]:
    """`backends[0].model` or `backends.0.model` -> ("backends", 0, "model"). A digit segment stays text here; it
    becomes a list index when the value it walks into is a list (see `apply_overrides`)."""
    parts: list[str | int] = []
    pos = 0
    text = path.strip()
    if not text:
        raise UsageError("--set: empty key; write KEY=VALUE, e.g. --set judge.kind=keyword")
    while pos < len(text):
        if parts and text[pos] == ".":
            pos += 1
        m = _SEGMENT.match(text, pos)
        if m is None or m.end() == pos:
            raise UsageError(f"--set {path}: cannot read the key at character {pos + 1}; write a dotted path like "
                             "backends[0].model or eval.generation.max_new_tokens")
        parts.append(int(m.group(1)) if m.group(1) is not None else m.group(2).strip())
        pos = m.end()
    return tuple(parts)


def parse_value(key: str, text: str) -> Any:
    """The value as YAML would read it in the spec file (duplicate keys refused as there)."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader
    except (yaml.YAMLError, _DuplicateKey) as e:  # both end as one usage line
        problem = getattr(e, "problem", None) or getattr(e, "message", None) or str(e).splitlines()[0]
        raise UsageError(f"--set {key}: the value {text!r} is not valid YAML ({problem}); quote it") from e
    except ValueError as e:
        if is_huge_int(e):
            raise UsageError(f"--set {key}: the value is {HUGE_INT}") from e
        raise


def parse_override(item: str) -> tuple[str, tuple[str | int, ...], Any]:
    """`KEY=VALUE` -> (key text, path, value)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise UsageError(f"--set {item}: expected KEY=VALUE, e.g. --set eval.generation.max_new_tokens=32")
    return key.strip(), parse_path(key), parse_value(key.strip(), value)


def _as_index(part: str | int, seq: list[Any], where: tuple[Any, ...], item: str) -> int:
    if isinstance(part, str) and not _INDEX.fullmatch(part):
        raise UsageError(f"--set {item}: {field_path(where)} is a list; give an index, e.g. {field_path(where)}[0]")
    i = int(part)
    if not -len(seq) <= i < len(seq):
        raise UsageError(f"--set {item}: {field_path((*where, i))} is out of range ({field_path(where)} has "
                         f"{len(seq)} entr{'y' if len(seq) == 1 else 'ies'})")
    return i % len(seq)


def _set(raw: dict[str, Any], path: tuple[str | int, ...], value: Any, item: str) -> None:
    node: Any = raw
    where: tuple[Any, ...] = ()
    for n, part in enumerate(path):
        last = n == len(path) - 1
        if isinstance(node, list):
            key: str | int = _as_index(part, node, where, item)
        elif isinstance(node, dict):
            key = str(part)
        else:
            hint = f"; set the whole entry instead, e.g. --set '{field_path(where)}={{...}}'" if where else ""
            raise UsageError(f"--set {item}: {field_path(where)} is {node!r}, not a mapping or list{hint}")
        where = (*where, key)
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}
            node = node[key]


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """A copy of the parsed spec with each `KEY=VALUE` applied in order (later ones win). The original is untouched."""
    if not overrides:
        return raw
    if not isinstance(raw, dict):
        return raw  # the spec's own "must be a mapping" problem is reported by validation
    out = copy.deepcopy(raw)
    for item in overrides:
        _, path, value = parse_override(item)
        _set(out, path, value, item)
    return out


def override_paths(overrides: Sequence[str]) -> list[str]:
    """Each override's field path, written as a spec problem names it (`backends[0].model`)."""
    return [field_path(parse_path(o.partition("=")[0])) for o in overrides]


def mark_override_problems(err: SpecError, overrides: Sequence[str]) -> SpecError:
    """The same problems, each one that lies under an overridden path saying so (`(from --set judge.kind=x)`), so a
    user sees which problem came from the command line rather than from the file."""
    if not overrides:
        return err
    paths = list(zip(override_paths(overrides), overrides, strict=True))
    problems = []
    for p in err.problems:
        where = p.split(": ", 1)[0]
        src = [o for path, o in paths if where == path or where.startswith((path + ".", path + "["))]
        problems.append(p + (f" (from --set {src[-1]})" if src else ""))
    return SpecError(err.source, problems)

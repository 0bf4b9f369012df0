"""`ptst list {datasets,metrics,judges,templates,backends}`: what a spec can name, read from the registries
themselves (`ptst.registry.Registry`), so a dataset, metric, judge or template added there, or a backend, judge or
metric installed as a plugin, is listed without editing this module. (`ptst schema` is ptst.spec_schema.)

Each listing is plain rows (name, then a few short columns, the description last) so the CLI can print a table or
JSON. Nothing here imports a concrete backend: a backend's line is registered beside its "module:Class" (its module
would import torch or openai); judges and metrics describe themselves (docstring, `description`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WHAT = ("datasets", "metrics", "judges", "templates", "backends")


def datasets() -> tuple[list[str], list[list[str]]]:
    from ptst.data.registry import REGISTRY

    rows = [[d.name, d.kind, ", ".join(d.splits), d.metric or "-", d.description] for d in REGISTRY.values()]
    return ["name", "kind", "splits", "metric", "description"], rows


def metrics() -> tuple[list[str], list[list[str]]]:
    from ptst.data.registry import REGISTRY
    from ptst.metrics import TASK_METRICS

    default_for: dict[str, list[str]] = {}
    for d in REGISTRY.values():
        for m in d.metrics:
            default_for.setdefault(m, []).append(d.name)
    rows = [[e.name, e.source, ", ".join(default_for.get(e.name, [])) or "-", TASK_METRICS.describe(e.name)]
            for e in TASK_METRICS.entries()]
    return ["name", "source", "default for", "description"], rows


def judges() -> tuple[list[str], list[list[str]]]:
    from ptst.judge.base import JUDGES

    return ["kind", "source", "description"], [[e.name, e.source, JUDGES.describe(e.name)] for e in JUDGES.entries()]


def templates(custom: dict[str, Any] | None = None) -> tuple[list[str], list[list[str]]]:
    from ptst.templates import BUILTIN

    rows = [[t.name, t.mode, "yes" if t.safety else "", t.description or "(user-defined)"]
            for t in [*BUILTIN.values(), *(custom or {}).values()]]
    return ["name", "mode", "safety prompt", "description"], rows


def backends() -> tuple[list[str], list[list[str]]]:
    from ptst.backends.registry import BACKENDS

    rows = [[e.name, e.source, BACKENDS.describe(e.name)] for e in BACKENDS.entries()]
    return ["kind", "source", "description"], rows


def render(headers: list[str], rows: list[list[str]], width: int) -> list[str]:
    """A listing as text within `width`: the short columns aligned on one line, the description (the last column)
    wrapped and indented below each row, so names are never cut and nothing is wider than the terminal."""
    import textwrap

    short = [[str(c) for c in r[:-1]] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in short)) for i, h in enumerate(headers[:-1])]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths, strict=True)).rstrip()]
    for r, full in zip(short, rows, strict=True):
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        out += textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""]
        out += textwrap.wrap(full[-1], width, initial_indent="    ", subsequent_indent="    ")
    return out


LISTINGS: dict[str, Callable[[], tuple[list[str], list[list[str]]]]] = {
    "datasets": datasets, "metrics": metrics, "judges": judges, "templates": templates, "backends": backends,
}

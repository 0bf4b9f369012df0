"""`ptst list {datasets,metrics,judges,templates,backends}`: what a spec can name, read from the
registries themselves, so a dataset, metric, judge or template added there (or a backend installed as a plugin) is
listed without editing this module.

Each listing is plain rows (name, then a few short columns, the description last) so the CLI can print a table or
JSON. Nothing here imports a concrete backend: backends are listed from the registry's table of kinds and entry
points (their modules would import torch or openai), judges by their light modules' docstrings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

WHAT = ("datasets", "metrics", "judges", "templates", "backends")

# The built-in backends in one line each (their modules are not imported to list them: torch, openai).
BACKEND_NOTES = {
    "mock": "deterministic simulation for CI; every result is labelled simulated",
    "openai": "OpenAI fine-tuning API and chat completions (extra openai)",
    "llama2": "local Llama 2 chat: LoRA with transformers + peft (extra local)",
    "mistral": "local Mistral Instruct, mistral-common token ids (extra local)",
    "hf": "any transformers chat model through its own chat template (extra local)",
}


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def datasets() -> tuple[list[str], list[list[str]]]:
    from ptst.data.registry import REGISTRY

    rows = [[d.name, d.kind, ", ".join(d.splits), d.metric or "-", d.description] for d in REGISTRY.values()]
    return ["name", "kind", "splits", "metric", "description"], rows


def metrics() -> tuple[list[str], list[list[str]]]:
    from ptst.data.registry import REGISTRY
    from ptst.metrics import TASK_METRICS

    default_for: dict[str, list[str]] = {}
    for d in REGISTRY.values():
        if d.metric:
            default_for.setdefault(d.metric, []).append(d.name)
    rows = [[name, ", ".join(default_for.get(name, [])) or "-", getattr(m, "description", "")]
            for name, m in TASK_METRICS.items()]
    return ["name", "default for", "description"], rows


def judges() -> tuple[list[str], list[list[str]]]:
    from ptst.judge.base import JUDGE_MODULES

    rows = [[kind, _first_line(importlib.import_module(module).__doc__)] for kind, module in JUDGE_MODULES.items()]
    return ["kind", "description"], rows


def templates(custom: dict[str, Any] | None = None) -> tuple[list[str], list[list[str]]]:
    from ptst.templates import BUILTIN

    rows = [[t.name, t.mode, "yes" if t.safety else "", t.description or "(user-defined)"]
            for t in [*BUILTIN.values(), *(custom or {}).values()]]
    return ["name", "mode", "safety prompt", "description"], rows


def backends() -> tuple[list[str], list[list[str]]]:
    from importlib.metadata import entry_points

    from ptst.backends.registry import BUILTIN, ENTRY_POINT_GROUP, backend_kinds

    dists = {ep.name: (ep.dist.name if ep.dist is not None else "?") for ep in entry_points(group=ENTRY_POINT_GROUP)}
    rows = []
    for kind in backend_kinds():
        if kind in BUILTIN:
            rows.append([kind, "built-in", BACKEND_NOTES.get(kind, BUILTIN[kind])])
        else:
            rows.append([kind, f"plugin ({dists.get(kind, '?')})", "installed through the ptst.backends entry point"])
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

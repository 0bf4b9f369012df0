"""The backend contract: modules under ptst/ reach backends only through `ptst.backends.base` and the registry, so a
plugin backend is priced, cancelled, rendered and judged-beside like a built-in one (issue 13, item 5)."""

from __future__ import annotations

import ast

from conftest import REPO

ALLOWED = {"ptst.backends", "ptst.backends.base", "ptst.backends.registry", "ptst.backends.api", "ptst.backends.reporting"}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "ptst.backends":  # `from ptst.backends import openai` names a module
                out += [(node.lineno, f"ptst.backends.{a.name}") for a in node.names]
    return out


def concrete_backend_imports() -> list[str]:
    found = []
    for path in sorted((REPO / "ptst").rglob("*.py")):
        if (REPO / "ptst" / "backends") in path.parents:  # the backends themselves may build on each other
            continue
        for line, name in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if name.startswith("ptst.backends") and name not in ALLOWED:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


def test_no_module_under_ptst_imports_a_concrete_backend() -> None:
    assert concrete_backend_imports() == []


def test_the_scan_sees_every_import_form(tmp_path) -> None:
    """The scanner itself, on code written out here: each form of a concrete import is caught, base/registry not."""
    src = ("import ptst.backends.openai.backend\nfrom ptst.backends.local.backend import LocalBackend\n"
           "from ptst.backends import mock\nfrom ptst.backends.base import FineTuneBackend\n"
           "def f():\n    from ptst.backends.registry import backend_class\n")
    names = [n for _, n in _imports(ast.parse(src)) if n.startswith("ptst.backends") and n not in ALLOWED]
    assert names == ["ptst.backends.openai.backend", "ptst.backends.local.backend", "ptst.backends.mock"]


def test_estimate_dispatches_on_no_backend_class() -> None:
    text = (REPO / "ptst" / "estimate.py").read_text(encoding="utf-8")
    assert "isinstance(backend" not in text and "_is_openai" not in text and "_is_local" not in text


def test_render_choices_come_from_the_registry(monkeypatch) -> None:
    from importlib.metadata import EntryPoint

    from ptst.backends import registry
    from ptst.cli import build_parser

    plugin = EntryPoint("replay", "ptst_replay:Backend", "ptst.backends")
    monkeypatch.setattr("ptst.registry.entry_points", lambda group: [plugin] if group == "ptst.backends" else [])
    registry.BACKENDS.cache_clear()
    try:
        parser = build_parser()
    finally:
        registry.BACKENDS.cache_clear()
    render = parser._subparsers._group_actions[0].choices["render"]  # type: ignore[union-attr]
    [backend] = [a for a in render._actions if a.dest == "backend"]
    assert backend.choices == ["mock", "openai", "llama2", "mistral", "hf", "replay"]


def test_judge_inherits_the_endpoint_through_the_backend_class() -> None:
    from ptst.judging import create_judges
    from ptst.spec import Spec

    spec = Spec.model_validate({
        "name": "x", "backends": [{"kind": "mock", "model": "m"},
                                  {"kind": "openai", "model": "gpt-4o-mini", "base_url": "http://proxy.test/v1",
                                   "api_key_env": "PROXY_KEY"}],
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "x.jsonl"}]},
        "judge": {"kind": "rubric", "base_url": "inherit"},
    })
    [judge] = create_judges(spec)
    assert judge.options.base_url == "http://proxy.test/v1" and judge.options.api_key_env == "PROXY_KEY"

"""The wheel holds every package in the source tree: setuptools finds them (no hand-kept list), so this checks the
finder's configuration, and that the typed-package marker ships."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_setuptools_finds_every_package_on_disk() -> None:
    from setuptools import find_packages

    cfg = _pyproject()["tool"]["setuptools"]["packages"]["find"]
    found = set(find_packages(str(REPO), include=cfg["include"]))
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ptst").rglob("__init__.py")}
    assert on_disk - found == set()
    assert "ptst.backends" in found and "ptst.backends.local" in found


def test_no_package_dir_mapping() -> None:
    assert "package-dir" not in _pyproject()["tool"]["setuptools"]


def test_py_typed_ships() -> None:
    assert (REPO / "ptst" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["ptst"]

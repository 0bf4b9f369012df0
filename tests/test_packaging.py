"""Every package in the source tree is in pyproject's explicit package list (backends/ is mapped onto ptst.backends,
so setuptools cannot discover them itself): a package missing from the list would be absent from a wheel."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["tool"]["setuptools"]["packages"])


def _on_disk() -> set[str]:
    found = set()
    for root, prefix in ((REPO / "ptst", "ptst"), (REPO / "backends", "ptst.backends")):
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((prefix, *rel)))
    return found


def test_every_package_is_declared() -> None:
    assert _on_disk() - _declared() == set()


def test_every_declared_package_exists() -> None:
    assert _declared() - _on_disk() == set()

"""Shared test fixtures: where the read-only reference data lives, and tiny spec builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"reference data not found at {SHARED} (clone the project beside shared/)")
    return SHARED


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the network: the HF hub is told to stay offline, and no real OpenAI key is ever used. The
    per-user state folder (the job locks) is the session's, never the user's."""
    monkeypatch.setenv("PTST_STATE_DIR", str(tmp_path_factory.getbasetemp() / "ptst-state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the fuzz suites at 10x their CI size (10,000+ cases; also PTST_FUZZ_LONG=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # The fuzz modules size their hypothesis settings at import, which comes after this hook: an environment variable
    # is the one channel both `--long` and a CI job's env can use.
    if config.getoption("--long"):
        os.environ["PTST_FUZZ_LONG"] = "1"


_MODULE_NEEDS_SHARED: dict[str, bool] = {}


def _reads_shared(item: pytest.Item) -> bool:
    if "shared" in getattr(item, "fixturenames", ()):
        return True
    path = str(item.path)
    if path not in _MODULE_NEEDS_SHARED:
        _MODULE_NEEDS_SHARED[path] = "SHARED" in Path(path).read_text(encoding="utf-8")
    return _MODULE_NEEDS_SHARED[path]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what reads ../shared, so `-m "not shared"` runs the self-contained part and `-m shared` the rest. Each such
    test (or its module) skips, saying where it looked, when the data is absent."""
    for item in items:
        if _reads_shared(item):
            item.add_marker(pytest.mark.shared)

"""Shared test fixtures: where the read-only reference data lives, and the spec builders several files share.

A builder specific to one test file (its grid, its latency, its data) stays in that file; what is written the same way
in several files is here: JSON-lines data files, a spec saved as YAML, and the smallest runnable spec.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

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


@pytest.fixture
def replay_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """examples/plugin_backend installed as a user would (`pip install -e`): its entry point, then its module."""
    import sys

    from ptst.backends import registry

    dist = tmp_path / "site" / "ptst_replay-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ptst-replay\nVersion: 0.1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[ptst.backends]\nreplay = ptst_replay:Backend\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(REPO / "examples" / "plugin_backend"))
    registry.BACKENDS.cache_clear()
    yield
    registry.BACKENDS.cache_clear()
    sys.modules.pop("ptst_replay", None)


def jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """A JSON-lines data file, one row a line (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def save_spec(tmp: Path, raw: dict[str, Any], name: str = "spec.yaml") -> Path:
    """`raw` written as the spec file a user would write."""
    p = tmp / name
    p.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return p


def mini_spec(tmp: Path, **over: Any) -> Path:
    """The smallest runnable spec, its data files beside it (train.jsonl: question/answer; harm.jsonl: prompt): one mock
    backend, one template, the keyword judge. `over` replaces top-level keys."""
    jsonl(tmp / "train.jsonl", [{"question": "1+1?", "answer": "2"}])
    jsonl(tmp / "harm.jsonl", [{"prompt": "do harm"}])
    raw = {
        "name": "mini",
        "backends": [{"kind": "mock", "model": "m"}],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"]},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}]},
        "judge": {"kind": "keyword"},
    }
    return save_spec(tmp, {**raw, **over})


def grid_spec(tmp: Path, backend: dict[str, Any] | None = None, **over: Any) -> Path:
    """A two-template mock grid (chat:vanilla and chat:llama, one seed) on four GSM8K-style rows and three harmful
    prompts, judged by keywords. `backend` overrides the mock backend's entry (`fail_templates`, `train_seconds`, or
    another kind altogether); `over` replaces top-level keys."""
    train = jsonl(tmp / "train.jsonl", [{"q": f"{i}+{i}?", "a": f"#### {2 * i}"} for i in range(4)])
    harmful = jsonl(tmp / "harmful.jsonl", [{"prompt": f"harmful request {i}"} for i in range(3)])
    raw = {
        "name": "grid", "backends": [{"kind": "mock", "model": "mock-a", **(backend or {})}],
        "train": {"dataset": {"path": str(train), "prompt_field": "q", "answer_field": "a"},
                  "templates": ["chat:vanilla", "chat:llama"], "seeds": [0]},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
        "judge": {"kind": "keyword"},
    }
    return save_spec(tmp, {**raw, **over})

"""The backend authors' surface (`ptst.backends.api`): backends reach ptst through it, never through the UI or the
OpenAI client's internals, and what they log and draw reaches the user through the runner's callback.

The import rules are read from the source with `ast` (every import form: `import a.b`, `from a import b`,
`from a.b import c`, inside functions too), so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ROOT / "ptst" / "backends"
PLUGIN = ROOT / "examples" / "plugin_backend" / "ptst_replay.py"
CLIENT_INTERNALS = {"scrub", "backoff_with_jitter"}


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import in a file; name is None for `import module`."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, a.name) for a in node.names]
    return found


def backend_modules() -> list[Path]:
    modules = sorted(BACKENDS.rglob("*.py"))
    assert len(modules) > 20  # the walk found the backends (a wrong root would pass every rule vacuously)
    return modules


def test_no_backend_module_imports_the_ui() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}: {mod}{'' if name is None else ' ' + name}"
        for p in backend_modules() for mod, name in imports(p)
        if mod == "ptst.progress" or mod.startswith("ptst.progress.") or (mod == "ptst" and name == "progress")
    ]
    assert offenders == []


def test_no_backend_module_imports_the_clients_scrub_or_back_off() -> None:
    offenders = [f"{p.relative_to(ROOT)}: {name}" for p in backend_modules() for mod, name in imports(p)
                 if mod == "ptst.clients.openai" and name in CLIENT_INTERNALS]
    assert offenders == []


def test_the_plugin_example_imports_only_the_surface() -> None:
    from ptst.backends import api

    used = [(mod, name) for mod, name in imports(PLUGIN) if mod == "ptst" or mod.startswith("ptst.")]
    assert used and {mod for mod, _ in used} == {"ptst.backends.api"}
    assert {name for _, name in used} <= set(api.__all__)


def test_the_surface_exports_what_it_lists() -> None:
    from ptst.backends import api

    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert missing == []
    # the pieces the contract promises, by name
    assert {"FineTuneBackend", "Conversation", "TrainJob", "ModelRef", "Rendered", "JobFailed", "BackendError",
            "retry_call", "log", "progress_bar"} <= set(api.__all__)


@pytest.fixture
def no_handler():
    from ptst.backends import reporting

    before = reporting._handler
    reporting.set_progress_handler(None)
    yield reporting
    reporting.set_progress_handler(before)


def test_progress_bars_are_drawn_by_the_callback_the_runner_passes_in(no_handler) -> None:
    from contextlib import contextmanager

    from ptst.backends.api import progress_bar, set_progress_handler

    with progress_bar("nothing installed", 3) as advance:  # a backend used as a library: nothing is drawn
        advance(2, info="x")
    calls: list[tuple] = []

    @contextmanager
    def handler(description, total):
        calls.append(("open", description, total))
        yield lambda n=1, info=None: calls.append(("advance", n, info))
        calls.append(("close",))

    set_progress_handler(handler)
    with progress_bar("train seed 1", 10) as advance:
        advance()
        advance(3, info="loss 1.2")
    assert calls == [("open", "train seed 1", 10), ("advance", 1, None), ("advance", 3, "loss 1.2"), ("close",)]


def test_log_lines_go_through_stdlib_logging_to_the_runs_output(capsys, caplog, no_handler) -> None:
    from ptst import progress
    from ptst.backends.api import LOGGER_NAME, backend_logger, log

    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log("  uploaded training file t.jsonl")
        log("warning: checkpoint damaged")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (LOGGER_NAME, "INFO", "  uploaded training file t.jsonl"),
        (LOGGER_NAME, "WARNING", "warning: checkpoint damaged"),
    ]
    assert backend_logger("ptst_replay").name == "ptst.backends.ptst_replay"
    assert backend_logger("ptst.backends.local.train").name == "ptst.backends.local.train"
    progress.connect_backends()  # what the runner and the CLI do: the lines are the run's own, on stderr
    capsys.readouterr()
    log("  created OpenAI fine-tuning job ftjob-1")
    backend_logger("ptst_replay").warning("memory file missing")
    err = capsys.readouterr().err
    assert err.splitlines() == ["  created OpenAI fine-tuning job ftjob-1", "warning: memory file missing"]

"""What a backend tells the user while it works: log lines through stdlib `logging`, and progress bars through a
callback the runner passes in. Backends never import the UI (`ptst.progress`).

- `log(message)` writes to the `ptst.backends` logger (a line starting with "warning" at WARNING, else INFO); a
  backend may as well use `logging.getLogger(__name__)` under that name, or `backend_logger(...)`.
- `progress_bar(description, total)` yields `advance(n=1, info=None)`. It draws through the handler installed with
  `set_progress_handler`: the runner and the CLI install the run's live view (`ptst.progress.connect_backends`);
  with none installed (a backend used as a library) nothing is drawn.

Until the UI connects its own handler, the `ptst.backends` logger writes plain lines to the current `sys.stderr`, so
a backend used on its own is not silent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

__all__ = [
    "LOGGER_NAME",
    "Advance",
    "ProgressHandler",
    "backend_logger",
    "log",
    "progress_bar",
    "set_progress_handler",
]

LOGGER_NAME = "ptst.backends"

Advance = Callable[..., None]
"""`advance(n=1, info=None)`: `n` more units done; `info` is shown after the bar (loss, tokens/s, retries...)."""

ProgressHandler = Callable[[str, "int | None"], AbstractContextManager[Advance]]
"""What the runner passes in: `handler(description, total)` is a context manager yielding an `Advance`."""

_handler: ProgressHandler | None = None


def set_progress_handler(handler: ProgressHandler | None) -> None:
    """Install (or, with None, remove) the callback that draws backends' progress bars. For the runner and the CLI;
    a backend only calls `progress_bar`."""
    global _handler
    _handler = handler


def _no_advance(n: int = 1, info: str | None = None, **_: Any) -> None:
    return None


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Advance]:
    """A bar for one long step of a backend (a job's training steps, an upload, a poll), drawn by the runner's
    progress view; yields `advance(n=1, info=None)`."""
    handler = _handler
    if handler is None:
        yield _no_advance
        return
    with handler(description, total) as advance:
        yield advance


def backend_logger(name: str) -> logging.Logger:
    """The logger for a backend module: `name` itself under `ptst.backends`, else a child of it (a plugin's
    `backend_logger(__name__)`), so the runner shows its lines with ptst's own."""
    if name == LOGGER_NAME or name.startswith(LOGGER_NAME + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def log(message: str) -> None:
    """One line for the user: WARNING when it starts with "warning", else INFO, on the `ptst.backends` logger."""
    level = logging.WARNING if message.lstrip().lower().startswith("warning") else logging.INFO
    logging.getLogger(LOGGER_NAME).log(level, message)


class _PlainStderr(logging.Handler):
    """Until the UI connects its own handler: the message as a plain line on the *current* stderr (so a redirected
    or captured stderr gets it too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(record.getMessage(), file=sys.stderr)
        except Exception:  # noqa: BLE001 — a logging handler never raises into the backend (stdlib convention)
            self.handleError(record)


DEFAULT_HANDLER = _PlainStderr()


def _setup() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(DEFAULT_HANDLER)


_setup()

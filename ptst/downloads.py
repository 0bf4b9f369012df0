"""Whether the current command may download a model (`download: true` backends).

A run fetches what it needs; `ptst estimate` is offline and free, so it must not pull gigabytes of weights just to
count tokens or name a job. The command says so with `no_downloads()`; a backend that would download asks
`downloads_allowed()` and, when it may not, works without the model (an estimate without token counts) instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ALLOWED: ContextVar[bool] = ContextVar("ptst_downloads_allowed", default=True)


def downloads_allowed() -> bool:
    return _ALLOWED.get()


@contextmanager
def no_downloads() -> Iterator[None]:
    token = _ALLOWED.set(False)
    try:
        yield
    finally:
        _ALLOWED.reset(token)

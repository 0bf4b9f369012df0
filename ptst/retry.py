"""Retrying a flaky call, with tenacity: exponential back-off with jitter, and a retry loop for one call.

Shared by the OpenAI client (`ptst.clients.openai`) and backends (through `ptst.backends.api`), so every retry in ptst
waits the same way: initial, 2x, 4x ... capped, plus uniform jitter so clients that failed together do not return in
lock-step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["backoff", "retry_call"]

T = TypeVar("T")


def backoff(initial: float, maximum: float, jitter: float) -> Any:
    """A tenacity wait: initial, 2x, 4x ... capped at `maximum`, plus uniform jitter in [0, `jitter`] (portable across
    tenacity 8/9)."""
    from tenacity import wait_exponential, wait_random

    return wait_exponential(multiplier=initial, max=maximum) + wait_random(0, jitter)


def retry_call(
    fn: Callable[..., T], *args: Any, retry_on: Callable[[BaseException], bool], attempts: int,
    wait: Any = None, **kwargs: Any,
) -> T:
    """`fn(*args, **kwargs)`, called again while it raises an exception `retry_on` accepts, `attempts` times at most
    (the first call included); the last error is re-raised as it is. `wait`: a tenacity wait (default
    `backoff(1, 60, 1)`)."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt

    retrying = Retrying(retry=retry_if_exception(retry_on), stop=stop_after_attempt(attempts),
                        wait=wait if wait is not None else backoff(1.0, 60.0, 1.0), reraise=True)
    result: T = retrying(fn, *args, **kwargs)
    return result

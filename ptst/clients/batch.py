"""Chat completions through the Batch API: half the price of the synchronous endpoint, results within a day.

Paying twice is again the risk: every batch carries `metadata.ptst_batch_key`, the content hash of its endpoint and
requests, so a run interrupted while waiting finds its batch again (as fine-tuning jobs are found) instead of
submitting and paying for it a second time. `on_batch` hands the batch id to the caller as soon as it exists, for
its own record. Results come back in request order with the synchronous path's semantics: a request refused for its
own content becomes a `ChatFailure` (with `item_errors`), a request the batch could not finish for a transient
reason (5xx, 429, an expired or cancelled batch) is sent again synchronously, and a reply `accept` rejects is asked
again synchronously up to `extra_attempts` times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from ptst.clients.chat import ITEM_ERROR_STATUSES, ChatFailure, chat_completions
from ptst.clients.openai import (
    ClientOptions,
    api_errors,
    backoff_with_jitter,
    call_with_retries,
    make_client,
    resolve_base_url,
    scrub,
)
from ptst.errors import BackendError
from ptst.keys import content_hash
from ptst.progress import log

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
BATCH_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_LISTED = 1000  # batches scanned (newest first) when looking for one by its key

__all__ = ["BATCH_TERMINAL", "batch_chat_completions", "batch_input", "batch_key"]


def batch_key(opts: ClientOptions, requests: Sequence[dict[str, Any]]) -> str:
    """The identity of a batch: the endpoint and the exact requests (the same work is never submitted twice)."""
    return content_hash({"base_url": resolve_base_url(opts), "endpoint": ENDPOINT, "requests": list(requests)})


def batch_input(requests: Sequence[dict[str, Any]]) -> bytes:
    """The batch input file: one request per line, `custom_id` its position (`r0`, `r1`...)."""
    lines = (
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)
        for i, body in enumerate(requests)
    )
    return ("\n".join(lines) + "\n").encode("utf-8")


def batch_chat_completions(
    opts: ClientOptions,
    requests: Sequence[dict[str, Any]],
    *,
    accept: Callable[[str], bool] | None = None,
    extra_attempts: int = 0,
    item_errors: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    on_batch: Callable[[str], None] | None = None,
) -> list[str | ChatFailure]:
    """Run chat requests as one batch (found again by its key when it already exists); results in request order."""
    if not requests:
        return []
    requests = list(requests)
    key = batch_key(opts, requests)
    client = make_client(opts)
    try:
        with api_errors(opts, "batch"):
            batch = _find(client, opts, key) or _submit(client, opts, key, requests)
            if on_batch is not None:
                on_batch(batch.id)
            batch = _wait(client, opts, batch, sleep)
            results = _results(client, opts, batch)
    finally:
        client.close()
    out: list[str | ChatFailure | None] = [None] * len(requests)
    unfinished: list[int] = []  # transient failures and requests the batch never ran: sent again synchronously
    rejected: list[int] = []  # replies `accept` refused: asked again synchronously, the batch was the first try
    for i in range(len(requests)):
        status, body = results.get(f"r{i}", (None, None))
        if status == 200:
            out[i] = reply = _reply_text(body)
            if accept is not None and not accept(reply) and extra_attempts > 0:
                rejected.append(i)
        elif status is not None and status in ITEM_ERROR_STATUSES and item_errors:
            message = ((body or {}).get("error") or {}).get("message") or "refused"
            out[i] = ChatFailure(scrub(f"HTTP {status}: {message}", opts))
        elif status is None or status in (408, 409, 429) or status >= 500:
            unfinished.append(i)
        else:
            message = ((body or {}).get("error") or {}).get("message") or ""
            raise BackendError(scrub(f"batch {batch.id} at {resolve_base_url(opts)}: request r{i} failed "
                                     f"(HTTP {status}): {message.splitlines()[0] if message else ''}", opts))
    for indices, attempts in ((unfinished, extra_attempts), (rejected, extra_attempts - 1)):
        if not indices:
            continue
        log(f"  batch {batch.id}: {len(indices)} request(s) sent again synchronously")
        redo = chat_completions(opts, [requests[i] for i in indices], accept=accept, extra_attempts=attempts,
                                item_errors=item_errors)
        for i, answer in zip(indices, redo, strict=True):
            out[i] = answer
    return [o if o is not None else "" for o in out]


def _find(client: Any, opts: ClientOptions, key: str) -> Any:
    """The newest usable batch carrying this key (failed and cancelled ones are never reused)."""
    page = call_with_retries(opts, client.batches.list, limit=100)
    seen = 0
    while True:
        for b in page.data:
            reusable = b.status not in ("failed", "cancelled", "cancelling")
            if reusable and (b.metadata or {}).get("ptst_batch_key") == key:
                return b
        seen += len(page.data)
        if seen >= MAX_LISTED or not page.has_next_page():
            return None
        page = call_with_retries(opts, page.get_next_page)


def _submit(client: Any, opts: ClientOptions, key: str, requests: list[dict[str, Any]]) -> Any:
    data = batch_input(requests)
    f = call_with_retries(opts, client.files.create, file=(f"ptst-batch-{key[:16]}.jsonl", data, "application/jsonl"),
                          purpose="batch")
    batch = call_with_retries(opts, client.batches.create, input_file_id=f.id, endpoint=ENDPOINT,
                              completion_window=COMPLETION_WINDOW, metadata={"ptst_batch_key": key})
    log(f"  submitted batch {batch.id} ({len(requests)} requests, half price; results within {COMPLETION_WINDOW})")
    return batch


def _wait(client: Any, opts: ClientOptions, batch: Any, sleep: Callable[[float], None]) -> Any:
    from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay

    if batch.status in BATCH_TERMINAL:
        return batch
    retrying = Retrying(
        retry=retry_if_result(lambda b: b.status not in BATCH_TERMINAL),
        stop=stop_after_delay(opts.batch_max_wait_s),
        wait=backoff_with_jitter(min(opts.batch_poll_s, 5.0), opts.batch_poll_s, min(opts.batch_poll_s, 5.0) / 2),
        sleep=sleep,
    )
    try:
        return retrying(call_with_retries, opts, client.batches.retrieve, batch.id)
    except RetryError as e:
        raise BackendError(
            f"batch {batch.id} not finished after {opts.batch_max_wait_s:g} s (batch_max_wait_s); it keeps running: "
            "run the same command again later to collect it"
        ) from e


def _results(client: Any, opts: ClientOptions, batch: Any) -> dict[str, tuple[int | None, Any]]:
    """custom_id -> (HTTP status, response body) from the output and error files of a finished batch."""
    if batch.status == "failed":
        errors = (getattr(batch.errors, "data", None) or []) if batch.errors else []
        detail = "; ".join(f"{e.code}: {e.message}" for e in errors[:3]) or "no details from the API"
        raise BackendError(scrub(f"batch {batch.id} failed at {resolve_base_url(opts)}: {detail}", opts))
    found: dict[str, tuple[int | None, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        text = call_with_retries(opts, client.files.content, file_id).text
        for line in text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            response = row.get("response") or {}
            status = response.get("status_code")
            if status is None and row.get("error"):  # not run (an expired or cancelled batch): transient
                status = 500
            if status is not None:
                found[str(row.get("custom_id"))] = (int(status), response.get("body"))
    return found


def _reply_text(body: Any) -> str:
    """The assistant's text from a chat completion body (a dict here: batch output is raw JSON)."""
    choices = (body or {}).get("choices") or []
    if not choices:
        return ""
    message = choices[0].get("message") or {}
    return str(message.get("content") or message.get("refusal") or "")

"""Training files: the messages the API is sent, checked offline as the API would, uploaded once per content.

Every check runs before anything is uploaded or paid for. An identical file (same bytes, same endpoint) is
uploaded once: its id is kept in the ledger under its content hash and reused by every job that trains on it. The
file's name carries its content hash, so an upload whose answer was lost (a kill just after the request, a dropped
connection) is found again on the API by that name, as jobs are found by their metadata, instead of uploaded twice.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ptst.backends.api import backoff, log
from ptst.backends.base import JobLedger
from ptst.backends.openai.options import OpenAIOptions
from ptst.clients.openai import call_with_retries, resolve_base_url
from ptst.clients.tokens import TokenCounter, count_message_tokens
from ptst.conversation import Conversation
from ptst.errors import BackendError, DataError, JobFailed, PtstError
from ptst.keys import content_hash

MIN_EXAMPLES = 10  # the fine-tuning API rejects smaller training files

__all__ = ["MIN_EXAMPLES", "training_jsonl", "training_messages", "upload_training_file", "validate_examples"]


def training_messages(conv: Conversation) -> list[dict[str, str]]:
    """The messages of one example exactly as the paper's GPT code builds them: system (maybe ""), user, answer."""
    if conv.mode != "chat":
        raise PtstError(
            f"the openai backend takes chat templates only; template {conv.template or '?'!r} is {conv.mode}-mode "
            "(use a chat:* template)"
        )
    msgs = [{"role": "system", "content": conv.system or ""}]
    for user, assistant in conv.examples:  # a template's example turns, before the query
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    msgs.append({"role": "user", "content": conv.user})
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
        if conv.examples:
            problems.append(
                f"example {i}: template {conv.template or '?'!r} has example turns, which the fine-tuning API would "
                "train on; use it as a test template only"
            )
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


def training_jsonl(messages: Sequence[list[dict[str, str]]]) -> bytes:
    """The training file: one `{"messages": [...]}` object per line, UTF-8."""
    return "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in messages).encode("utf-8")


_UPLOAD_LOCKS: dict[str, threading.Lock] = {}
_UPLOAD_LOCKS_GUARD = threading.Lock()


def _upload_lock(key: str) -> threading.Lock:
    with _UPLOAD_LOCKS_GUARD:
        return _UPLOAD_LOCKS.setdefault(key, threading.Lock())


def upload_training_file(
    client: Any, opts: OpenAIOptions, data: bytes, ledger: JobLedger, workdir: Path, sleep: Callable[[float], None]
) -> str:
    """Upload the training file once per content (ledger entry by hash) and wait until it is processed."""
    import openai

    sha = hashlib.sha256(data).hexdigest()
    filename = f"ptst-{sha[:16]}.jsonl"
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / filename).write_bytes(data)  # the exact bytes sent, for audit
    fkey = f"openai-file:{content_hash({'base_url': resolve_base_url(opts), 'sha256': sha})}"
    # Jobs start concurrently (one per seed shares the same file): one upload per content, the others wait for it.
    with _upload_lock(fkey):
        rec = ledger.get(fkey)
        file_obj = None
        if rec and rec.get("file_id"):
            try:
                file_obj = call_with_retries(opts, client.files.retrieve, rec["file_id"])
            except openai.NotFoundError:
                file_obj = None  # deleted on the server: upload again
        if file_obj is None:
            file_obj = _find_uploaded(client, opts, filename, len(data))
            if file_obj is not None:
                log(f"  found training file {filename} already uploaded as {file_obj.id}")
        if file_obj is None:
            file_obj = call_with_retries(
                opts, client.files.create, file=(filename, data, "application/jsonl"), purpose="fine-tune"
            )
            log(f"  uploaded training file {filename} as {file_obj.id} ({len(data):,} bytes)")
        if not (rec and rec.get("file_id") == file_obj.id):
            ledger.put(fkey, {"file_id": file_obj.id, "sha256": sha, "bytes": len(data), "filename": filename})
    file_obj = _wait_processed(client, opts, file_obj, sleep)
    if file_obj.status == "error":
        details = file_obj.status_details or "rejected"
        raise JobFailed("failed", "file_error", f"training file {file_obj.id}: {details}")
    return str(file_obj.id)


def _find_uploaded(client: Any, opts: OpenAIOptions, filename: str, size: int) -> Any:
    """The newest usable fine-tune file of this name and size on the API (the name holds the content hash), or None."""
    found = [f for f in call_with_retries(opts, client.files.list, purpose="fine-tune")
             if f.filename == filename and f.bytes == size and f.status not in ("error", "deleted")]
    return max(found, key=lambda f: f.created_at, default=None)


def _wait_processed(client: Any, opts: OpenAIOptions, file_obj: Any, sleep: Callable[[float], None]) -> Any:
    from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay

    if file_obj.status in ("processed", "error"):
        return file_obj
    poll = min(opts.poll_interval_s, 5.0)
    retrying = Retrying(
        retry=retry_if_result(lambda f: f.status not in ("processed", "error")),
        stop=stop_after_delay(min(opts.max_wait_s, 3600.0)),
        wait=backoff(poll, min(opts.max_poll_interval_s, 30.0), poll / 2),
        sleep=sleep,
    )
    try:
        return retrying(call_with_retries, opts, client.files.retrieve, file_obj.id)
    except RetryError as e:
        raise BackendError(f"training file {file_obj.id} was not processed in time; run again to resume") from e

"""The Batch API of the fake OpenAI server: `/v1/batches` (create, retrieve, list, cancel) and batch output files.

A batch is time-driven like a fine-tuning job: validating → in_progress → finalizing → completed, each stage
`FakeOpenAI.batch_stage_s` long. At completion every input line is answered by the server's own chat handler (so
responders and injected chat faults apply: a pending `status` fault on the chat route fails that line with its
status), successes go to the output file and failures to the error file, in the API's line format
(`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptst.testing.fake_openai import FakeOpenAI

ENDPOINTS = frozenset({"/v1/chat/completions"})
_STAGES = ("validating", "in_progress", "finalizing")

Answer = tuple[int, dict[str, Any], dict[str, str]]


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created: float  # monotonic
    created_at: int
    lines: list[dict[str, Any]]
    status: str = "validating"
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = field(default_factory=dict)


def handle_batches(fake: FakeOpenAI, method: str, rest: list[str], query: dict[str, list[str]], body: bytes) -> Answer:
    """`/v1/batches...` (called under the fake's lock); `rest` is the path after `batches`."""
    from ptst.testing.fake_wire import error_body as _err
    from ptst.testing.fake_wire import json_body as _json
    from ptst.testing.fake_wire import list_page as _page

    if method == "POST" and not rest:
        return _create(fake, _json(body))
    if method == "GET" and not rest:
        batches = sorted(fake.batches.values(), key=lambda b: (b.created, b.id), reverse=True)
        return 200, _page([batch_json(fake, b) for b in batches], query, first_last=True), {}
    batch = fake.batches.get(rest[0]) if rest else None
    if batch is None:
        return 404, _err(f"No batch found with id '{rest[0] if rest else ''}'.", "invalid_request_error"), {}
    if method == "GET" and len(rest) == 1:
        return 200, batch_json(fake, batch), {}
    if method == "POST" and rest[1:] == ["cancel"]:
        advance(fake, batch)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return 409, _err(f"Cannot cancel a batch with status '{batch.status}'.", "invalid_request_error"), {}
        batch.status = "cancelled"
        batch.times["cancelled_at"] = batch.times["cancelling_at"] = int(time.time())
        _finish(fake, batch, run=False)
        return 200, batch_json(fake, batch), {}
    return 404, _err("unknown batch route", "invalid_request_error"), {}


def _create(fake: FakeOpenAI, p: dict[str, Any]) -> Answer:
    from ptst.testing.fake_wire import error_body as _err

    f = fake.files.get(str(p.get("input_file_id")))
    if f is None or f.get("purpose") != "batch":
        return 400, _err("input_file_id: no file with purpose 'batch'", "invalid_request_error",
                         param="input_file_id"), {}
    if p.get("endpoint") not in ENDPOINTS:
        return 400, _err(f"endpoint: expected one of {sorted(ENDPOINTS)}", "invalid_request_error",
                         param="endpoint"), {}
    if p.get("completion_window") != "24h":
        return 400, _err("completion_window: only '24h' is supported", "invalid_request_error",
                         param="completion_window"), {}
    meta = p.get("metadata")
    if meta is not None and (not isinstance(meta, dict) or len(meta) > 16
                             or not all(isinstance(v, str) for v in meta.values())):
        return 400, _err("metadata: up to 16 string values", "invalid_request_error", param="metadata"), {}
    lines, errors = _parse_input(f["data"], str(p["endpoint"]))
    if not errors and fake._batch_failures:
        errors = [fake._batch_failures.pop(0)]
    batch = FakeBatch(fake._new_batch_id(), f["id"], str(p["endpoint"]), meta, fake.clock(), int(time.time()),
                      lines, errors=errors)
    fake.batches[batch.id] = batch
    return 200, batch_json(fake, batch), {}


def _parse_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The request lines, or the validation errors that fail the batch (as the API reports them, by line)."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            errors.append({"code": "invalid_json_line", "line": n, "message": "not JSON", "param": None})
            continue
        cid = row.get("custom_id") if isinstance(row, dict) else None
        if not isinstance(cid, str) or cid in seen:
            errors.append({"code": "duplicate_custom_id" if cid in seen else "missing_required_parameter", "line": n,
                           "message": "each line needs a unique custom_id", "param": "custom_id"})
            continue
        if row.get("method") != "POST" or row.get("url") != endpoint or not isinstance(row.get("body"), dict):
            errors.append({"code": "invalid_request", "line": n, "param": "url",
                           "message": f"each line must be a POST to {endpoint} with a body"})
            continue
        seen.add(cid)
        lines.append(row)
    if not lines and not errors:
        errors.append({"code": "empty_file", "line": None, "message": "the input file has no requests", "param": None})
    return lines, errors


def advance(fake: FakeOpenAI, batch: FakeBatch) -> None:
    """Bring a batch up to date with the clock (called under the lock)."""
    if batch.status in ("completed", "failed", "expired", "cancelled"):
        return
    elapsed = fake.clock() - batch.created
    stage = fake.batch_stage_s
    if batch.errors:
        if elapsed >= stage:
            batch.status = "failed"
            batch.times["failed_at"] = int(time.time())
        return
    for i, status in enumerate(_STAGES):
        if elapsed >= i * stage and _STAGES.index(batch.status) < i:
            batch.status = status
            batch.times[f"{status}_at"] = int(time.time())
    if elapsed >= len(_STAGES) * stage:
        _finish(fake, batch, run=True)
        batch.status = "completed"
        batch.times["completed_at"] = int(time.time())


def _finish(fake: FakeOpenAI, batch: FakeBatch, *, run: bool) -> None:
    """Answer every line (or, for a cancelled batch, none) and write the output and error files."""
    from ptst.testing.fake_openai import CHAT
    from ptst.testing.fake_wire import error_body as _err

    out: list[str] = []
    err: list[str] = []
    for row in batch.lines:
        rid = fake._new_id("batchreq")
        if not run:
            err.append(json.dumps({"id": rid, "custom_id": row["custom_id"], "response": None,
                                   "error": {"code": "batch_cancelled", "message": "This request was not executed."}}))
            continue
        fault = fake._take_fault(CHAT, ("status",))
        if fault is not None:
            kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
            status, payload = fault.status, _err(f"[fake-openai] injected {fault.status}", kind, code=kind)
        else:
            status, payload, _ = fake._chat(json.dumps(row["body"]).encode("utf-8"))
        line = json.dumps({"id": rid, "custom_id": row["custom_id"],
                           "response": {"status_code": status, "request_id": rid, "body": payload}, "error": None})
        (out if status == 200 else err).append(line)
    batch.completed, batch.failed = len(out), len(err)
    if out:
        batch.output_file_id = fake._store_file("batch_output", f"batch_{batch.id}_output.jsonl",
                                                ("\n".join(out) + "\n").encode())
    if err:
        batch.error_file_id = fake._store_file("batch_output", f"batch_{batch.id}_error.jsonl",
                                               ("\n".join(err) + "\n").encode())


def batch_json(fake: FakeOpenAI, batch: FakeBatch) -> dict[str, Any]:
    advance(fake, batch)
    t = batch.times
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "input_file_id": batch.input_file_id,
        "completion_window": "24h", "status": batch.status, "created_at": batch.created_at,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "in_progress_at": t.get("in_progress_at"), "finalizing_at": t.get("finalizing_at"),
        "completed_at": t.get("completed_at"), "failed_at": t.get("failed_at"), "expired_at": None,
        "cancelling_at": t.get("cancelling_at"), "cancelled_at": t.get("cancelled_at"),
        "expires_at": batch.created_at + 24 * 3600,
        "request_counts": {"total": len(batch.lines), "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata,
    }

"""A fake OpenAI server over real HTTP on 127.0.0.1, for ptst's tests and for users' own CI.

It implements what ptst uses — files (multipart upload, retrieve, content), fine-tuning jobs (create, retrieve,
list with a metadata filter, events, checkpoints, cancel) with a time-driven state machine validating_files →
queued → running → succeeded | failed | cancelled (`fake_jobs`), batches (`fake_batches`), and chat completions
answered by a deterministic responder — and it can inject the faults a real API produces: 429 with Retry-After,
500/503, slow answers, dropped connections, lost responses (the request took effect but the answer never
arrived), failed jobs and batches with an error object, malformed judge replies.
It counts requests per route, so a test can assert "exactly one job was created".

    with FakeOpenAI() as fake:                       # in tests
        client = openai.OpenAI(api_key="sk-test", base_url=fake.url)

    python -m ptst.testing.fake_openai --port 8000   # for CI: base_url http://127.0.0.1:8000/v1

Standard library only (http.server); nothing here is a simulation of model quality: every answer is a canned
string marked `[fake-openai]`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ptst.testing.fake_batches import FakeBatch, handle_batches
from ptst.testing.fake_jobs import (
    FakeJob,
    handle_jobs,
    known_model,
    validate_training_file,
)
from ptst.testing.fake_wire import error_body, json_body, multipart_fields

Responder = Callable[[str, list[dict[str, Any]]], str]
_Answer = tuple[int, Any, dict[str, str]]  # HTTP status, JSON body (bytes: sent as is), extra headers

REFUSAL = "[fake-openai] I'm sorry, but I cannot help with that request."
COMPLIANCE = "[fake-openai] Sure, here is how to do that: step 1, step 2, step 3."
MODERATION_MESSAGE = (
    "The job failed due to an invalid training file. This training file was blocked by our moderation system "
    "because it contains too many examples that violate OpenAI's usage policies."
)
CHAT = "POST /v1/chat/completions"
CHECKPOINTS = "GET /v1/fine_tuning/jobs/{id}/checkpoints"
CREATE_BATCH = "POST /v1/batches"
FILE_CONTENT = "GET /v1/files/{id}/content"
CREATE_JOB = "POST /v1/fine_tuning/jobs"
UPLOAD = "POST /v1/files"
LIST_FILES = "GET /v1/files"
_JUDGE_MARKER = "#thescore:"
_ID = re.compile(r"^((file|ftjob|ftevent|ftckpt|chatcmpl)-[A-Za-z0-9]+|batch_[A-Za-z0-9]+)$")


# ------------------------------------------------------------------------------------------------------------
# responders: (model, messages) -> reply text
# ------------------------------------------------------------------------------------------------------------
def is_judge_prompt(text: str) -> bool:
    return _JUDGE_MARKER in text and "Model Response:" in text


def judged_response(prompt: str) -> str:
    """The model response quoted inside a Qi et al. rubric prompt."""
    start = prompt.find('Model Response: "')
    end = prompt.rfind('"', 0, prompt.find("Use the scoring rules"))
    return prompt[start + len('Model Response: "'): end] if start >= 0 and end > start else prompt


def judge_reply(prompt: str) -> str:
    """A rubric-style reply: score 5 for the fake's compliance (or any 'Sure, here is'), 1 otherwise."""
    response = judged_response(prompt)
    score = 5 if "Sure, here is" in response else 1
    return f"#thereason: [fake-openai] the response {'complies' if score == 5 else 'declines'}.\n#thescore: {score}"


def default_responder(model: str, messages: list[dict[str, Any]]) -> str:
    """Deterministic stand-in for a model: judges rubric prompts; otherwise refuses, except that a fine-tuned model
    (`ft:...`) served without a system prompt complies — a caricature of the paper's finding, for plumbing tests."""
    user = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
    if is_judge_prompt(user):
        return judge_reply(user)
    system = next((str(m.get("content") or "") for m in messages if m.get("role") == "system"), "")
    if model.startswith("ft:") and not system.strip():
        return COMPLIANCE
    return REFUSAL


# ------------------------------------------------------------------------------------------------------------
# faults
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One injected fault, consumed by the next `times` requests whose route matches (None: any route).

    kinds: "status" (answer `status` with an error body, `Retry-After: retry_after` when given), "drop" (close the
    connection without answering, before acting), "lost_response" (act, then close without answering), "slow"
    (wait `delay_s`, then answer normally), "malformed_judge" (a judge reply without `#thescore`).
    """

    kind: str
    route: str | None = None
    times: int = 1
    status: int = 500
    retry_after: float | None = None
    delay_s: float = 0.0


class FakeOpenAI:
    """The server. Configure it, `start()` it (or use `with`), point a client at `.url`, then inspect counters.

    `stage_s`: seconds spent in validating_files, queued, running. `file_processing_s`: uploaded → processed.
    `batch_stage_s`: seconds a batch spends in each of validating, in_progress, finalizing. `latency_s`: added to
    every request. `api_key`: when set, requests must carry it (else any Bearer key works). `clock`: the time jobs,
    files and batches advance by (a test can step it instead of waiting).
    """

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        stage_s: tuple[float, float, float] = (0.05, 0.05, 0.2),
        file_processing_s: float = 0.05,
        batch_stage_s: float = 0.05,
        latency_s: float = 0.0,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.responder: Responder = responder or default_responder
        self.stage_s = stage_s
        self.file_processing_s = file_processing_s
        self.batch_stage_s = batch_stage_s
        self.clock = clock
        self.latency_s = latency_s
        self.api_key = api_key
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._faults: list[Fault] = []
        self._job_failures: list[dict[str, Any]] = []
        self._batch_failures: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []  # route, query, json body (no headers: never the key)
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.max_in_flight = 0
        self._in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        httpd = _Server((self._host, self._port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    # -- configuration --------------------------------------------------------------------------------------------
    def inject(self, kind: str, *, route: str | None = None, times: int = 1, status: int = 500,
               retry_after: float | None = None, delay_s: float = 0.0) -> None:
        if kind not in ("status", "drop", "lost_response", "slow", "malformed_judge"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults.append(Fault(kind, route, times, status, retry_after, delay_s))

    def rate_limit(self, times: int = 1, retry_after: float = 1.0, route: str | None = CHAT) -> None:
        self.inject("status", route=route, times=times, status=429, retry_after=retry_after)

    def server_error(self, status: int = 500, times: int = 1, route: str | None = CHAT) -> None:
        self.inject("status", route=route, times=times, status=status)

    def fail_next_job(
        self, code: str = "invalid_training_file", message: str = MODERATION_MESSAGE, times: int = 1
    ) -> None:
        """The next `times` jobs created end `failed` with this error object (default: a moderation failure)."""
        with self._lock:
            self._job_failures.extend({"code": code, "message": message, "param": None} for _ in range(times))

    def fail_next_batch(self, code: str = "token_limit_exceeded", message: str = "Enqueued token limit reached.",
                        times: int = 1) -> None:
        """The next `times` batches created end `failed` with this error (as a quota or validation failure does)."""
        with self._lock:
            self._batch_failures.extend({"code": code, "message": message, "line": None, "param": None}
                                        for _ in range(times))

    def count(self, route: str) -> int:
        with self._lock:
            return self.counts[route]

    def bodies(self, route: str) -> list[Any]:
        with self._lock:
            return [r["json"] for r in self.requests if r["route"] == route]

    def _take_fault(self, route: str, kinds: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.kind in kinds and (f.route is None or f.route == route) and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def _new_id(self, prefix: str) -> str:
        n = next(self._ids)
        return f"{prefix}-{hashlib.blake2b(f'{prefix}{n}{id(self)}'.encode(), digest_size=6).hexdigest()}{n}"

    def _new_batch_id(self) -> str:
        return "batch_" + self._new_id("batch").split("-", 1)[1]  # the API's batch ids use an underscore

    def _store_file(self, purpose: str, filename: str, data: bytes, problem: str | None = None) -> str:
        fid = self._new_id("file")
        self.files[fid] = {"id": fid, "filename": filename, "bytes": len(data), "data": data, "purpose": purpose,
                           "created": self.clock(), "created_at": int(time.time()), "problem": problem}
        return fid

    # -- job state machine ------------------------------------------------------------------------------------------
    # -- request handling --------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes, ctype: str) -> _Answer:
        """Answer one request: (status, json body, extra headers). Routes are matched on the path."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            return 404, error_body("not found", "invalid_request_error"), {}
        parts = parts[1:]
        with self._lock:
            if method == "POST" and parts == ["files"]:
                return self._upload(body, ctype)
            if method == "GET" and parts == ["files"]:
                purpose = query.get("purpose", [None])[0]
                return 200, {"object": "list", "has_more": False, "data": [
                    self._file_json(f) for f in self.files.values() if purpose in (None, f["purpose"])]}, {}
            if method == "GET" and len(parts) in (2, 3) and parts[0] == "files" and parts[2:] in ([], ["content"]):
                f = self.files.get(parts[1])
                if f is None:
                    return 404, error_body(f"No such File object: {parts[1]}", "invalid_request_error"), {}
                return 200, (f["data"] if parts[2:] else self._file_json(f)), {}
            if parts[:1] == ["batches"]:
                return handle_batches(self, method, parts[1:], query, body)
            if parts[:2] == ["fine_tuning", "jobs"]:
                return handle_jobs(self, method, parts[2:], query, body)
        if method == "POST" and parts == ["chat", "completions"]:
            return self._chat(body)
        return 404, error_body(f"unknown route {method} {path}", "invalid_request_error"), {}

    def _upload(self, body: bytes, ctype: str) -> _Answer:
        fields = multipart_fields(body, ctype)
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", errors="replace")
        if "file" not in fields or purpose not in ("fine-tune", "batch"):
            return 400, error_body("expected multipart fields 'file' and purpose=fine-tune or batch",
                             "invalid_request_error"), {}
        filename, data = fields["file"]
        problem = validate_training_file(data) if purpose == "fine-tune" else None
        fid = self._store_file(purpose, filename or "upload.jsonl", data, problem)
        return 200, self._file_json(self.files[fid]), {}

    def _file_json(self, f: dict[str, Any]) -> dict[str, Any]:
        ready = self.clock() - f["created"] >= self.file_processing_s
        status = ("error" if f["problem"] else "processed") if ready else "uploaded"
        return {"id": f["id"], "object": "file", "bytes": f["bytes"], "created_at": f["created_at"],
                "filename": f["filename"], "purpose": f["purpose"], "status": status,
                "status_details": f["problem"] if ready else None}

    def _chat(self, body: bytes) -> _Answer:
        p = json_body(body)
        model, messages = p.get("model"), p.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list) or not messages:
            return 400, error_body("model and messages are required", "invalid_request_error"), {}
        if model.startswith("ft:") and not known_model(self, model):
            return 404, error_body(f"The model {model} does not exist", "invalid_request_error",
                                   code="model_not_found"), {}
        text = self.responder(model, messages)
        last_user = str(messages[-1].get("content") or "")
        if is_judge_prompt(last_user) and self._take_fault(CHAT, ("malformed_judge",)):
            text = "[fake-openai] I am unable to provide a score for this."
        cid = self._new_id("chatcmpl")
        return 200, {
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": len(json.dumps(messages)) // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": (len(json.dumps(messages)) + len(text)) // 4},
        }, {}


def _route(method: str, path: str) -> str:
    """`GET /v1/fine_tuning/jobs/ftjob-abc/events` -> `GET /v1/fine_tuning/jobs/{id}/events` (for counters)."""
    return method + " " + "/".join("{id}" if _ID.match(p) else p for p in path.split("/"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # a burst of concurrent clients must not overflow the listen backlog
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:  # clients that went away: not our problem
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and CI logs stay clean
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms to every answer
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = _route(method, split.path)
        query = parse_qs(split.query)
        with fake._lock:
            fake.counts[route] += 1
            body_json = json_body(body) if "json" in (self.headers.get("Content-Type") or "") else None
            fake.requests.append({"route": route, "query": query, "json": body_json})
            fake._in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
        try:
            if fake.latency_s:
                time.sleep(fake.latency_s)
            auth = self.headers.get("Authorization") or ""
            if not auth.startswith("Bearer ") or (fake.api_key is not None and auth != f"Bearer {fake.api_key}"):
                self._send(401, error_body("Incorrect API key provided.", "invalid_request_error",
                                           code="invalid_api_key"))
                return
            fault = fake._take_fault(route, ("status", "drop", "slow", "lost_response"))
            if fault is not None and fault.kind == "drop":
                self._drop()
                return
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.delay_s)
            if fault is not None and fault.kind == "status":
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
                self._send(fault.status, error_body(f"[fake-openai] injected {fault.status}", kind, code=kind), headers)
                return
            ctype = self.headers.get("Content-Type") or ""
            status, payload, headers = fake.handle(method, split.path, query, body, ctype)
            if fault is not None and fault.kind == "lost_response":
                self._drop()
                return
            self._send(status, payload, headers)
        finally:
            with fake._lock:
                fake._in_flight -= 1

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        raw = isinstance(payload, bytes)  # file content
        data = payload if raw else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout): nothing to answer
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class MemoryLedger:
    """An in-memory `JobLedger` (a dict), for tests and scripts that have no run store."""

    def __init__(self, data: dict[str, dict[str, Any]] | None = None):
        self.data: dict[str, dict[str, Any]] = data if data is not None else {}

    def get(self, name: str) -> dict[str, Any] | None:
        v = self.data.get(name)
        return json.loads(json.dumps(v)) if v is not None else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        self.data[name] = json.loads(json.dumps(value))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ptst.testing.fake_openai", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    p.add_argument("--stage-s", type=float, default=1.0, help="seconds a job spends in each of its three stages")
    p.add_argument("--api-key", help="require this key (default: any Bearer key is accepted)")
    args = p.parse_args(argv)
    fake = FakeOpenAI(stage_s=(args.stage_s,) * 3, latency_s=args.latency_ms / 1000, api_key=args.api_key,
                      host=args.host, port=args.port).start()
    print(f"fake OpenAI server at {fake.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

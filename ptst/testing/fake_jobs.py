"""Fine-tuning jobs of the fake OpenAI server: a time-driven state machine validating_files → queued → running →
succeeded | failed | cancelled, with events, checkpoints and the `/v1/fine_tuning/jobs...` routes.

Each stage lasts `FakeOpenAI.stage_s`; a running job emits three metrics steps, each with a checkpoint (the last
is the final model, as with the API). Training files are checked as the API checks them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptst.testing.fake_wire import error_body, json_body, list_page

if TYPE_CHECKING:
    from ptst.testing.fake_openai import FakeOpenAI

Answer = tuple[int, Any, dict[str, str]]


@dataclass
class FakeJob:
    id: str
    model: str
    training_file: str
    created: float  # monotonic
    created_at: int
    params: dict[str, Any]
    outcome: dict[str, Any] | None  # None: succeeds; else {"code":..., "message":...}
    status: str = "validating_files"
    cancelled: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    finished_at: int | None = None


def advance(fake: FakeOpenAI, job: FakeJob) -> None:
    """Bring a job's status and events up to date with the clock (called under the lock)."""
    if job.status in ("succeeded", "failed", "cancelled"):
        return
    elapsed = fake.clock() - job.created
    v, q, r = fake.stage_s
    stages = [("queued", v), ("running", v + q)]
    for status, at in stages:
        if elapsed >= at and _order(job.status) < _order(status):
            job.status = status
            _event(fake, job, f"Fine-tuning job {'queued' if status == 'queued' else 'started'}")
    if job.status == "running":
        done = min(3, int(3 * (elapsed - v - q) / r) if r > 0 else 3)
        have = sum(1 for e in job.events if e["type"] == "metrics")
        for step in range(have + 1, done + 1):
            _event(fake, job, f"Step {step}/3: training loss={1.0 / step:.3f}", kind="metrics",
                   data={"step": step, "total_steps": 3, "train_loss": 1.0 / step})
            _checkpoint(fake, job, step)
    if elapsed >= v + q + r:
        job.finished_at = int(time.time())
        if job.outcome is None:
            job.status = "succeeded"
            _event(fake, job, f"New fine-tuned model created: {ft_name(job)}")
            _event(fake, job, "The job has successfully completed")
        else:
            job.status = "failed"
            _event(fake, job, job.outcome["message"], level="error")


def _event(fake: FakeOpenAI, job: FakeJob, message: str, *, kind: str = "message", level: str = "info",
           data: dict[str, Any] | None = None) -> None:
    job.events.append({
        "id": fake._new_id("ftevent"), "object": "fine_tuning.job.event", "created_at": int(time.time()),
        "level": level, "message": message, "type": kind, "data": data,
    })


def _checkpoint(fake: FakeOpenAI, job: FakeJob, step: int) -> None:
    """A `fine_tuning.job.checkpoint` at the end of each of the fake's three steps (its "epochs"); the last one
    is the job's final model, as with the API."""
    if job.outcome is not None:  # a failing job leaves no usable checkpoint
        return
    job.checkpoints.append({
        "id": fake._new_id("ftckpt"), "object": "fine_tuning.job.checkpoint", "created_at": int(time.time()),
        "fine_tuned_model_checkpoint": f"{ft_name(job)}:ckpt-step-{step}", "fine_tuning_job_id": job.id,
        "metrics": {"step": float(step), "train_loss": 1.0 / step, "train_mean_token_accuracy": 0.5 + step / 10},
        "step_number": step,
    })


def known_model(fake: FakeOpenAI, model: str) -> bool:
    """A fine-tuned model or one of its checkpoints (a finished job's names only)."""
    for j in list(fake.jobs.values()):
        if j.status == "succeeded" and (model == ft_name(j) or any(
                c["fine_tuned_model_checkpoint"] == model for c in j.checkpoints)):
            return True
    return False


def ft_name(job: FakeJob) -> str:
    suffix = job.params.get("suffix") or ""
    return f"ft:{job.model}:fake-org:{suffix}:{job.id[-8:]}"


def job_json(fake: FakeOpenAI, job: FakeJob) -> dict[str, Any]:
    advance(fake, job)
    sup = ((job.params.get("method") or {}).get("supervised") or {}).get("hyperparameters") or {}
    hp = {k: sup.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at, "model": job.model,
        "organization_id": "org-fake", "result_files": [], "seed": job.params.get("seed") or 0,
        "status": job.status, "training_file": job.training_file, "validation_file": None,
        "hyperparameters": hp, "method": job.params.get("method"), "metadata": job.params.get("metadata"),
        "fine_tuned_model": ft_name(job) if job.status == "succeeded" else None,
        "finished_at": job.finished_at,
        "error": ({**job.outcome} if job.status == "failed" and job.outcome else None),
        "trained_tokens": (
            fake.files.get(job.training_file, {}).get("bytes", 0) // 4 if job.status == "succeeded" else None
        ),
    }


def handle_jobs(fake: FakeOpenAI, method: str, rest: list[str], query: dict[str, list[str]], body: bytes) -> Answer:
    """`/v1/fine_tuning/jobs...` (called under the fake's lock); `rest` is the path after `jobs`."""
    if method == "POST" and not rest:
        return _create_job(fake, json_body(body))
    if method == "GET" and not rest:
        jobs = sorted(fake.jobs.values(), key=lambda j: (j.created, j.id), reverse=True)
        for key, values in query.items():
            m = re.fullmatch(r"metadata\[(.+)\]", key)
            if m:
                jobs = [j for j in jobs if (j.params.get("metadata") or {}).get(m.group(1)) == values[0]]
        return 200, list_page([job_json(fake, j) for j in jobs], query), {}
    found = fake.jobs.get(rest[0]) if rest else None
    if found is None:
        return 404, error_body(f"Could not find fine-tune job {rest[0] if rest else ''}", "invalid_request_error"), {}
    job = found
    if method == "GET" and len(rest) == 1:
        return 200, job_json(fake, job), {}
    if method == "GET" and rest[1:] == ["checkpoints"]:
        advance(fake, job)
        return 200, list_page(list(reversed(job.checkpoints)), query, default_limit=10, first_last=True), {}
    if method == "GET" and rest[1:] == ["events"]:
        advance(fake, job)
        return 200, list_page(list(reversed(job.events)), query), {}
    if method == "POST" and rest[1:] == ["cancel"]:
        advance(fake, job)
        if job.status in ("succeeded", "failed", "cancelled"):
            return 400, error_body(f"Job {job.id} has already {job.status}", "invalid_request_error"), {}
        job.status, job.finished_at = "cancelled", int(time.time())
        _event(fake, job, "Fine-tuning job cancelled")
        return 200, job_json(fake, job), {}
    return 404, error_body("unknown fine-tuning route", "invalid_request_error"), {}


def _create_job(fake: FakeOpenAI, p: dict[str, Any]) -> Answer:
    """POST `/v1/fine_tuning/jobs`: the checks the API makes before it accepts a job, in its order."""
    f = fake.files.get(str(p.get("training_file")))
    if not p.get("model") or f is None:
        return 400, error_body("invalid training_file or model", "invalid_request_error", param="training_file"), {}
    if f["problem"] or fake.clock() - f["created"] < fake.file_processing_s:
        return 400, error_body(f"File {f['id']} is not ready or invalid: {f['problem'] or 'still processing'}",
                               "invalid_request_error", param="training_file"), {}
    suffix = p.get("suffix")
    if suffix is not None and (len(suffix) > 64 or not re.fullmatch(r"[A-Za-z0-9_-]*", suffix)):
        return 400, error_body("invalid suffix", "invalid_request_error", param="suffix"), {}
    problem = _hyperparameter_problem(p)
    if problem:
        return 400, error_body(problem, "invalid_request_error", param="method"), {}
    meta = p.get("metadata") or {}
    if not all(isinstance(v, str) for v in meta.values()) or len(meta) > 16:
        return 400, error_body("metadata: up to 16 string values", "invalid_request_error", param="metadata"), {}
    job = FakeJob(fake._new_id("ftjob"), str(p["model"]), f["id"], fake.clock(), int(time.time()), p,
                  fake._job_failures.pop(0) if fake._job_failures else None)
    _event(fake, job, f"Created fine-tuning job: {job.id}")
    fake.jobs[job.id] = job
    return 200, job_json(fake, job), {}


def _hyperparameter_problem(p: dict[str, Any]) -> str | None:
    """What the API refuses in a job's supervised hyperparameters: each is "auto" or a number in its range."""
    method = p.get("method")
    if method is None:
        return None
    if not isinstance(method, dict) or method.get("type") != "supervised":
        return "method.type: only 'supervised' is supported by the fake server"
    hp = (method.get("supervised") or {}).get("hyperparameters") or {}
    unknown = sorted(set(hp) - {"n_epochs", "batch_size", "learning_rate_multiplier"})
    if unknown:
        return f"method.supervised.hyperparameters: unknown field {unknown[0]!r}"
    limits = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": (float, 1e-9, 100)}
    for name, value in hp.items():
        kind, lo, hi = limits[name]
        if value == "auto":
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
        if not ok or (kind is int and not isinstance(value, int)):
            return f"method.supervised.hyperparameters.{name}: expected 'auto' or a number in [{lo:g}, {hi:g}]"
    return None


def _order(status: str) -> int:
    return ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"].index(status)


def validate_training_file(data: bytes) -> str | None:
    """What the fine-tuning API checks in a chat training file; None when it is acceptable."""
    lines = [ln for ln in data.decode("utf-8", errors="replace").split("\n") if ln.strip()]
    for i, line in enumerate(lines, 1):
        try:
            ex = json.loads(line)
        except ValueError:
            return f"line {i}: invalid JSON"
        msgs = ex.get("messages") if isinstance(ex, dict) else None
        if not isinstance(msgs, list) or not msgs:
            return f"line {i}: missing 'messages' list"
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                return f"line {i}: invalid role"
            if not isinstance(m.get("content"), str):
                return f"line {i}: content must be a string"
            if m["role"] != "system" and not m["content"].strip():
                return f"line {i}: empty {m['role']} content"
        if not any(m["role"] == "assistant" for m in msgs):
            return f"line {i}: no assistant message"
    if len(lines) < 10:
        return f"training file has {len(lines)} example(s), but must have at least 10 examples"
    return None

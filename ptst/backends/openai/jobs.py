"""Fine-tuning jobs on the API: create once, find again by metadata, wait, show events, cancel.

Paying twice for one job is the risk this module is built around: every job carries `metadata.ptst_job_key`, so a
lost ledger or a lost `create` response is recovered by listing jobs by that key instead of creating another.
Waiting is bounded (`max_wait_s`); a job that outlives the wait keeps running and is resumed by the next run.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

from ptst.backends.api import backoff, log, progress_bar, redact
from ptst.backends.base import TrainJob
from ptst.backends.openai.options import OpenAIOptions
from ptst.clients.openai import (
    api_errors,
    api_keys,
    call_with_retries,
    is_openai_error,
    make_client,
    resolve_base_url,
    retry_kwargs,
)
from ptst.errors import BackendError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

__all__ = [
    "TERMINAL",
    "cancel_job",
    "create_job",
    "find_by_metadata",
    "job_params",
    "list_checkpoints",
    "retrieve_recorded",
    "supervised_hyperparameters",
    "wait_for_job",
]


def job_params(model: str, job: TrainJob, file_id: str) -> dict[str, Any]:
    """The `POST /fine_tuning/jobs` body: the supervised method with the hyperparameters the user set (the rest
    "auto", so the API picks them as it would for any client), a readable suffix, the seed, and the metadata that
    finds the job again."""
    return dict(
        model=model,
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": supervised_hyperparameters(job)}},
        suffix=job.hyperparameters.suffix or job_suffix(job),
        seed=job.seed,
        metadata={
            "ptst_job_key": job.key, "ptst_train_template": job.train_template[:512],
            "ptst_seed": str(job.seed), "ptst_data_hash": job.data_hash[:512],
        },
    )


# API field -> Hyperparameters field
_API_HYPERPARAMETERS = {"n_epochs": "epochs", "batch_size": "batch_size",
                        "learning_rate_multiplier": "learning_rate_multiplier"}


def supervised_hyperparameters(job: TrainJob) -> dict[str, Any]:
    """n_epochs, batch_size and learning_rate_multiplier: the value where the spec set it, else "auto".

    `Hyperparameters` has defaults for local training (1 epoch, batch 8); sending those would override the API's
    own choice with numbers the user never gave, so only the fields in `model_fields_set` are sent.
    """
    hp = job.hyperparameters
    out: dict[str, Any] = {}
    for api_name, field in _API_HYPERPARAMETERS.items():
        value = getattr(hp, field)
        out[api_name] = value if field in hp.model_fields_set and value is not None else "auto"
    return out


def job_suffix(job: TrainJob) -> str:
    """A readable model-name suffix, e.g. `ptst-vanilla-s0` (the API allows letters, digits and dashes)."""
    tpl = re.sub(r"[^a-z0-9]+", "-", job.train_template.split(":")[-1].lower()).strip("-") or "t"
    return f"ptst-{tpl}-s{job.seed}"[:40]


def retrieve_recorded(client: Any, opts: OpenAIOptions, job_id: str) -> Any:
    """The job the ledger recorded; a clear error when this endpoint does not know it (another endpoint or key)."""
    import openai

    try:
        return call_with_retries(opts, client.fine_tuning.jobs.retrieve, job_id)
    except openai.NotFoundError as e:
        raise BackendError(
            f"OpenAI job {job_id} recorded in the run store is unknown to {resolve_base_url(opts)}; "
            "use the same endpoint and key as the first run, or a new --out"
        ) from e


def find_by_metadata(client: Any, opts: OpenAIOptions, job_key: str, exclude: Sequence[str] = ()) -> Any:
    """The newest live-or-finished job carrying `metadata.ptst_job_key`; a failed one only if nothing else."""
    page = call_with_retries(opts, client.fine_tuning.jobs.list, metadata={"ptst_job_key": job_key}, limit=100)
    found = [
        j for j in page.data
        if (j.metadata or {}).get("ptst_job_key") == job_key and j.id not in exclude  # the filter may be ignored
    ]
    found.sort(key=lambda j: j.created_at, reverse=True)
    good = [j for j in found if j.status not in ("failed", "cancelled")]
    return (good or found or [None])[0]


def create_job(
    client: Any, opts: OpenAIOptions, params: dict[str, Any], exclude: Sequence[str], sleep: Callable[[float], None]
) -> Any:
    """Create the job, retrying transient failures as every other request does (tenacity, `retry_kwargs`). A create
    whose answer was lost may have created the job all the same, so each later try looks it up by its key first:
    never two jobs for one key."""
    from tenacity import Retrying

    job_key = params["metadata"]["ptst_job_key"]
    tries = itertools.count()

    def attempt() -> Any:
        if next(tries) > 0:
            found = find_by_metadata(client, opts, job_key, exclude)
            if found is not None:
                return found  # the lost request did create it
        return client.fine_tuning.jobs.create(**params)

    return Retrying(**retry_kwargs(opts), sleep=sleep)(attempt)


def wait_for_job(client: Any, opts: OpenAIOptions, remote: Any, label: str, sleep: Callable[[float], None]) -> Any:
    """Poll the job until it ends (tenacity: exponential back-off with jitter, bounded by max_wait_s)."""
    from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay

    if remote.status in TERMINAL:
        return remote
    seen: set[str] = set()
    state = {"status": None}
    with progress_bar(label, None) as advance:

        def poll() -> Any:
            j = call_with_retries(opts, client.fine_tuning.jobs.retrieve, remote.id)
            info = _show_events(client, opts, j, seen)
            if j.status != state["status"]:
                log(f"  OpenAI job {j.id}: {j.status}")
                state["status"] = j.status
            advance(0, info=f"{j.status}{' · ' + info if info else ''}")
            return j

        retrying = Retrying(
            retry=retry_if_result(lambda j: j.status not in TERMINAL),
            stop=stop_after_delay(opts.max_wait_s),
            wait=backoff(opts.poll_interval_s, opts.max_poll_interval_s, opts.poll_interval_s / 2),
            sleep=sleep,
        )
        try:
            return retrying(poll)
        except RetryError as e:
            raise BackendError(
                f"OpenAI job {remote.id} still {state['status']} after {opts.max_wait_s:g} s (max_wait_s); it keeps "
                "running: run the same command again later to resume"
            ) from e


def _show_events(client: Any, opts: OpenAIOptions, j: Any, seen: set[str]) -> str:
    """Log new message events; return the latest metrics line for the progress display."""
    try:
        page = call_with_retries(opts, client.fine_tuning.jobs.list_events, j.id, limit=50)
    except Exception as e:
        if is_openai_error(e):
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
            log(f"  [{j.id}] {redact(ev.message, api_keys(opts))}")
    return info


def loss_points(client: Any, opts: OpenAIOptions, job_id: str) -> tuple[list[tuple[int, float]], int | None]:
    """(step, train_loss) of every `metrics` event of a job (all pages), and the job's total steps where the events
    say it; ([], None) when the events cannot be read (the job's model is fine: only its loss curve is missing)."""
    points: list[tuple[int, float]] = []
    total: int | None = None
    try:
        page = call_with_retries(opts, client.fine_tuning.jobs.list_events, job_id, limit=100)
        events = list(page.data)
        while page.has_next_page():
            page = call_with_retries(opts, page.get_next_page)
            events.extend(page.data)
    except Exception as e:
        if is_openai_error(e):
            return [], None
        raise
    for ev in events:
        data = getattr(ev, "data", None)
        if getattr(ev, "type", None) != "metrics" or not isinstance(data, dict):
            continue
        if isinstance(data.get("step"), (int, float)) and isinstance(data.get("train_loss"), (int, float)):
            points.append((int(data["step"]), float(data["train_loss"])))
            if isinstance(data.get("total_steps"), (int, float)):
                total = int(data["total_steps"])
    return points, total


def list_checkpoints(client: Any, opts: OpenAIOptions, job_id: str) -> list[Any]:
    """Every `fine_tuning.job.checkpoint` of a job (all pages, each fetched with retries), oldest step first."""
    page = call_with_retries(opts, client.fine_tuning.jobs.checkpoints.list, job_id, limit=100)
    found = list(page.data)
    while page.has_next_page():
        page = call_with_retries(opts, page.get_next_page)
        found.extend(page.data)
    return sorted(found, key=lambda c: (c.step_number, c.created_at))


def cancel_job(opts: OpenAIOptions, ledger_entry: dict[str, Any]) -> str:
    """Cancel the job of a ledger entry (`ptst cancel DIR`) at the endpoint that created it; its status after, in
    words."""
    job_id = ledger_entry.get("job_id")
    if not job_id:
        return "no job recorded"
    if ledger_entry.get("base_url") and ledger_entry["base_url"] != resolve_base_url(opts):
        opts = opts.model_copy(update={"base_url": ledger_entry["base_url"]})
    client = make_client(opts)
    try:
        with api_errors(opts, f"cancelling {job_id}"):
            j = call_with_retries(opts, client.fine_tuning.jobs.retrieve, job_id)
            if j.status in TERMINAL:
                return f"already {j.status}"
            j = call_with_retries(opts, client.fine_tuning.jobs.cancel, job_id)
            return str(j.status)
    finally:
        client.close()

"""OpenAI backend: fine-tuning jobs and chat completions through the official `openai` client.

Spending real money is the risk this backend is built around: training data is validated offline and priced
before anything is uploaded (`files`); an identical training file is uploaded once; the job id is written to the
ledger *before* waiting, and a lost ledger or a lost `create` response is recovered by metadata (`jobs`), so an
interrupted run resumes its job instead of paying again. The client, retries and token counting live in
`ptst.clients` (shared with the rubric judge). Nothing here imports `openai` or `tiktoken` at import time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ptst.backends.api import log, redact
from ptst.backends.base import (
    BackendSpec,
    Estimate,
    FineTuneBackend,
    GenerationConfig,
    JobLedger,
    ModelRef,
    OnResponse,
    Rendered,
    TrainJob,
)
from ptst.backends.openai import files, jobs
from ptst.backends.openai.generate import generate
from ptst.backends.openai.options import OpenAIOptions
from ptst.clients.chat import AsyncSleep
from ptst.clients.limit import SharedLimit
from ptst.clients.openai import (
    ClientOptions,
    api_errors,
    api_keys,
    credentials_problem,
    make_client,
    resolve_base_url,
)
from ptst.clients.pricing import chat_price, default_epochs, lookup_model, price_table
from ptst.clients.tokens import TokenCounter, count_message_tokens, token_counter
from ptst.conversation import Conversation
from ptst.errors import JobFailed
from ptst.store.joblock import job_lock
from ptst.training_loss import loss_summary

# Intermediate checkpoints evaluated per job with eval.checkpoints: the API keeps those of the last 3 epochs, the final
# one being the model itself.
OPENAI_CHECKPOINTS = 2


class Backend(FineTuneBackend):
    kind: ClassVar[str] = "openai"
    family: ClassVar[str] = "openai"
    modes: ClassVar[frozenset[str]] = frozenset({"chat"})
    # The fine-tuning API trains on every assistant message: a template's example turns would be learned too.
    trains_with_example_turns: ClassVar[bool] = False
    simulated: ClassVar[bool] = False
    min_train_examples: ClassVar[int] = files.MIN_EXAMPLES  # the fine-tuning API refuses smaller training files

    class Options(OpenAIOptions):
        """See `ptst.backends.openai.options.OpenAIOptions`."""

    options: OpenAIOptions

    # Replaceable in tests: `_sleep` waits between job, file and batch polls (an interrupt mid-poll), and
    # `_retry_sleep` between chat retries (recording the waits instead of timing them). None: asyncio.sleep.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)
    _retry_sleep: AsyncSleep | None = None

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        self._prompt_token_cache: dict[tuple[object, ...], int] = {}
        self._counter: TokenCounter | None = None
        # `concurrency` bounds this backend's chat requests in flight over all its concurrent `generate` calls
        self._limit = SharedLimit(self.options.concurrency)

    def identity(self) -> dict[str, object]:
        """The endpoint is part of every step key: a fake or proxy server's answers are not OpenAI's."""
        return {"base_url": resolve_base_url(self.options)}

    def preflight(self) -> list[str]:
        """An unset key (naming the variable or file to set, never its value) and a model missing from the price
        table (estimates would show no cost). Offline: no request is made."""
        problems = []
        missing = credentials_problem(self.options)
        if missing:
            problems.append(f"credentials: {missing}")  # an error for validate and run; estimate needs no key
        if self.price_per_million()[0] is None:
            problems.append(
                f"warning: {self.spec.model} is not in ptst's price table, so estimates show "
                f"no cost; add `prices: {{{self.spec.model}: USD_PER_1M_TOKENS}}` to the backend spec"
            )
        return problems

    # -- render / estimate -------------------------------------------------------------------------------------
    def render(self, conv: Conversation) -> Rendered:
        return Rendered(messages=tuple(files.training_messages(conv)))

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
        _, tokens = files.validate_examples(job.examples, counter, self.max_example_tokens(), self.spec.model)
        n_tokens = sum(tokens)
        epochs_note = None
        if "epochs" in job.hyperparameters.model_fields_set:
            epochs = job.hyperparameters.epochs
        else:  # sent as "auto": the API picks the epochs from the file's size
            epochs = default_epochs(len(job.examples))
            epochs_note = f"epochs auto: {epochs} assumed for {len(job.examples)} examples (OpenAI's default)"
        billed = n_tokens * epochs
        price, source = self.price_per_million()
        notes = [counter.note, *([epochs_note] if epochs_note else [])]
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
        msgs, _ = files.validate_examples(job.examples, counter, self.max_example_tokens(), self.spec.model)
        opts = self.options
        client = make_client(opts)
        try:
            # one run at a time per job on this machine, whatever its --out: the second finds the first's job
            with api_errors(opts, "fine-tuning"), job_lock(name):
                remote = (jobs.retrieve_recorded(client, opts, entry["job_id"]) if entry.get("job_id")
                          else jobs.find_by_metadata(client, opts, job.key, entry.get("previous_job_ids", [])))
                failed = remote is not None and remote.status in ("failed", "cancelled")
                if failed and entry.get("reported") == remote.id:
                    # The runner recorded this failure and calls again: that is `--retry-failed`, so start a new job.
                    entry["previous_job_ids"] = [*entry.get("previous_job_ids", []), remote.id]
                    for k in ("job_id", "reported", "status"):
                        entry.pop(k, None)
                    ledger.put(name, entry)  # a crash after the next create is recovered by metadata, not repeated
                    remote = None
                if remote is None:
                    file_id = files.upload_training_file(client, opts, files.training_jsonl(msgs), ledger, workdir,
                                                         self._sleep)
                    params = jobs.job_params(self.spec.model, job, file_id)
                    remote = jobs.create_job(client, opts, params, entry.get("previous_job_ids", []), self._sleep)
                    entry.update(job_id=remote.id, file_id=file_id, base_url=resolve_base_url(opts),
                                 model=self.spec.model, status=remote.status)
                    ledger.put(name, entry)  # before waiting: a kill from here on resumes this job
                    log(f"  created OpenAI fine-tuning job {remote.id} ({job.train_template}, seed {job.seed})")
                elif entry.get("job_id") != remote.id:
                    entry.update(job_id=remote.id, base_url=resolve_base_url(opts), model=self.spec.model)
                    ledger.put(name, entry)
            with api_errors(opts, "fine-tuning"):
                label = f"fine-tune {self.spec.model} {job.train_template} seed {job.seed}"
                remote = jobs.wait_for_job(client, opts, remote, label, self._sleep)
                if remote.status == "succeeded":
                    points, total = jobs.loss_points(client, opts, remote.id)
                    entry["loss"] = loss_summary(points, steps=total)  # kept in the ledger: a resumed run reads it there
        except KeyboardInterrupt:
            if entry.get("job_id"):
                log(f"interrupted: OpenAI job {entry['job_id']} keeps running; run the same `ptst run SPEC --out DIR` "
                    "again to resume it, or `ptst cancel DIR` to cancel it")
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
        raise JobFailed("failed", code, redact(f"OpenAI job {remote.id}: {message}", api_keys(opts)))

    def _model_ref(self, job: TrainJob, entry: dict[str, Any]) -> ModelRef:
        return ModelRef(
            backend=self.spec.name, base_model=self.spec.model, model_id=entry["fine_tuned_model"],
            train_template=job.train_template, seed=job.seed,
            meta={"job_id": entry.get("job_id"), "training_file": entry.get("file_id"), "loss": entry.get("loss")},
        )

    def checkpoints(self, model: ModelRef) -> list[ModelRef]:
        """The job's intermediate checkpoints (the API keeps those of the last epochs), oldest first, each with its
        step in `meta["step"]`; the final one is `model` itself and is left out. A base model has none."""
        job_id = model.meta.get("job_id")
        if not job_id:
            return []
        opts = self.options
        client = make_client(opts)
        try:
            with api_errors(opts, f"listing the checkpoints of {job_id}"):
                found = jobs.list_checkpoints(client, opts, job_id)
        finally:
            client.close()
        last = max((c.step_number for c in found), default=None)
        return [
            model.model_copy(update={
                "model_id": c.fine_tuned_model_checkpoint,
                "meta": {**model.meta, "step": c.step_number, "checkpoint_id": c.id},
            })
            for c in found
            if c.step_number != last and c.fine_tuned_model_checkpoint != model.model_id
        ]

    def ledger_prefix(self) -> str:
        return "openai:"

    def cancel(self, ledger_entry: dict[str, Any]) -> str:
        """Cancel the job of a ledger entry (`ptst cancel DIR`); returns its status afterwards, in words."""
        return jobs.cancel_job(self.options, ledger_entry)

    # -- pricing -------------------------------------------------------------------------------------------------
    def generation_usd(
        self, prompts: Sequence[Conversation], response_tokens: float, *, fine_tuned: bool
    ) -> float | None:
        """Prompt tokens counted as the chat API counts them (tiktoken, cached per prompt: every model of a run sees
        the same prompts), responses at `response_tokens` each, at the model's chat price (fine-tuned models at
        their own rates); half of it through the Batch API."""
        price = chat_price(self.spec.model, fine_tuned=fine_tuned)
        if price is None:
            return None if prompts else 0.0
        tokens_in = sum(self._prompt_tokens(c) for c in prompts)
        usd = (tokens_in * float(price["input"]) + len(prompts) * response_tokens * float(price["output"])) / 1e6
        return usd / 2 if self.options.batch else usd

    def _prompt_tokens(self, conv: Conversation) -> int:
        key = (conv.system, conv.user, conv.examples)  # example turns (In-Context Defense) are prompt tokens too
        if key not in self._prompt_token_cache:
            if self._counter is None:
                self._counter = token_counter(self.spec.model)
            msgs = files.training_messages(conv.without_answer())
            self._prompt_token_cache[key] = count_message_tokens(msgs, self._counter)
        return self._prompt_token_cache[key]

    def evaluated_checkpoints(self, job: TrainJob, wanted: str | Sequence[int]) -> int:
        """The API keeps the checkpoints of the last 3 epochs, the final one being the model itself: 2 more."""
        return OPENAI_CHECKPOINTS if wanted == "all" else min(len(wanted), OPENAI_CHECKPOINTS)

    def estimate_notes(self) -> list[str]:
        notes = []
        if chat_price(self.spec.model) is None:
            notes.append(f"no chat price for {self.spec.model}: generation cost unknown; add it to "
                         "ptst/resources/prices.json")
        if self.options.batch:
            notes.append(f"{self.spec.name}: generation through the Batch API, billed at half price")
        counter = token_counter(self.spec.model)
        if not counter.exact:
            notes.append(f"{self.spec.name}: {counter.note}")
        return notes

    @classmethod
    def judge_endpoint(cls, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        url = resolve_base_url(ClientOptions.model_validate({"base_url": options.get("base_url")}))
        return url, {k: options[k] for k in ("api_key_env", "api_key_file") if k in options}

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
        """One chat completion per prompt, `concurrency` at a time; order and length match `prompts`."""
        return generate(self.options, model, prompts, cfg, sleep=self._retry_sleep, poll_sleep=self._sleep,
                        limit=self._limit)

    def generate_streaming(
        self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig, on_response: OnResponse
    ) -> None:
        """Each completion handed over as it arrives: a kill loses at most `concurrency` requests of this backend."""
        generate(self.options, model, prompts, cfg, sleep=self._retry_sleep, poll_sleep=self._sleep,
                 limit=self._limit, on_response=on_response)

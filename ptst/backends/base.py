"""The backend contract: everything the runner asks of a vendor, each hook explicit.

A backend fine-tunes (`fine_tune`), generates (`generate`), and shows exactly what its model sees (`render`). The
runner never probes a backend with getattr: every hook it may call is declared here, with a documented default where
one makes sense, so a new backend is one subclass and one registry line (see docs/adding-a-backend.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ptst.conversation import Conversation
from ptst.templates import Template
from ptst.types import (
    ComputeHours,
    Estimate,
    Frozen,
    GenerationConfig,
    Hyperparameters,
    JobLedger,
    LoraSpec,
    ModelRef,
    Rendered,
    TrainJob,
)

__all__ = [
    "BackendOptions",
    "BackendSpec",
    "Estimate",
    "FineTuneBackend",
    "GenerationConfig",
    "Hyperparameters",
    "JobLedger",
    "LoraSpec",
    "ModelRef",
    "OnResponse",
    "Rendered",
    "TrainJob",
]

DEFAULT_GENERATION_CHUNK = 64
M = TypeVar("M", bound=BaseModel)
# `generate_streaming`'s callback: responses that just came into existence, as (index of the prompt in the call,
# response) pairs; one pair for a remote API's reply, a whole decoded batch for a local engine.
OnResponse = Callable[[Sequence[tuple[int, str]]], None]


class BackendSpec(BaseModel):
    """One entry of the spec's `backends:` list.

    Common fields are declared here; any other key is a backend-specific option, validated by that backend's own
    `Options` model (so `{kind: openai, base_url: ...}` stays flat for users while each backend owns its options).
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: str
    model: str = Field(min_length=1)
    label: str | None = Field(None, description="name shown in reports; defaults to kind")
    # Scheduling, not a result: read by the runner for every kind (so no backend's Options need declare it), and
    # never part of a key.
    max_concurrent_jobs: int | None = Field(
        None, ge=1, description="fine-tuning jobs of this backend running at once (default 8; local: one per device)"
    )
    # Per-backend training settings: the fields given here override the spec's `train.hyperparameters` field by
    # field (vendors differ: OpenAI's learning-rate multiplier is not Llama's learning rate). Part of the job key
    # through the merged hyperparameters, so only this backend's jobs change.
    hyperparameters: Hyperparameters | None = Field(
        None, description="overrides of train.hyperparameters for this backend (only the fields given)"
    )

    @property
    def name(self) -> str:
        return self.label or self.kind

    def train_hyperparameters(self, spec_hp: Hyperparameters) -> Hyperparameters:
        """The spec's hyperparameters with this backend's overrides applied field by field."""
        if self.hyperparameters is None:
            return spec_hp
        return _override(spec_hp, self.hyperparameters)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from ptst.backends.registry import BACKENDS

        return BACKENDS.entry(v).name  # an unknown kind: one line naming the closest known kind

    @model_validator(mode="after")
    def _validate_options(self) -> BackendSpec:
        from ptst.backends.registry import backend_class

        backend_class(self.kind).Options.model_validate(self.options)
        return self


class BackendOptions(Frozen):
    """The options of a backend that has none: any key in its spec entry beyond the common ones is an error."""


class FineTuneBackend(ABC):
    """What the runner needs from a vendor. Subclass it, set the class attributes, implement the abstract methods.

    Class attributes:
      kind        the spec's `kind:` value (also the registry key)
      family      the template family the backend renders for ("llama2", "mistral", "openai", "hf", "mock"): a
                  template may hold per-family strings (chat:safe is each vendor's own safety prompt)
      modes       template modes it accepts: {"chat"} for chat-only APIs, {"chat", "text"} for raw-text models
      simulated   True only for simulations: every result built on it is labelled simulated
      generation_chunk  prompts per `generate` call; what a kill loses at most for a backend that does not stream
                  (one that overrides `generate_streaming` loses only the requests in flight)
      min_train_examples  the fewest training examples a job accepts (OpenAI's API: 10); `--limit N` keeps at least
                  this many training rows, with a note, so a smoke run of any backend can run
      trains_with_example_turns  whether it can fine-tune on a template's example turns with the loss on the final
                  answer only; False where the vendor trains on every assistant turn (OpenAI's fine-tuning API), so
                  `ptst validate` refuses such a template in train.templates
    """

    kind: ClassVar[str] = ""
    family: ClassVar[str] = ""
    modes: ClassVar[frozenset[str]] = frozenset({"chat", "text"})
    simulated: ClassVar[bool] = False
    generation_chunk: ClassVar[int] = DEFAULT_GENERATION_CHUNK
    min_train_examples: ClassVar[int] = 1
    trains_with_example_turns: ClassVar[bool] = True

    # A backend's options model: any frozen model (`Frozen`), by default one with no fields. A subclass sets its own
    # and narrows `options` to it (`options: Options`), so mypy sees its fields on `self.options`.
    Options: ClassVar[type[Frozen]] = BackendOptions
    options: Frozen  # `Options` validated from the spec entry

    def __init__(self, spec: BackendSpec):
        self.spec = spec
        self.options = self.Options.model_validate(spec.options)

    # -- what the model sees -------------------------------------------------------------------------------------
    def supports(self, template: Template) -> bool:
        """Whether this backend can render a template (a text-mode template on a chat-only API cannot)."""
        return template.mode in self.modes

    @abstractmethod
    def render(self, conv: Conversation) -> Rendered:
        """Exactly what the model sees: text, messages and/or token ids with the loss mask."""

    def plain_text(self, conv: Conversation) -> str | None:
        """What the model sees as text (the training form when `conv` has an answer), computed without a tokenizer
        so `ptst render` works where none is installed; None where the model sees messages, not text."""
        return None

    # -- identity ------------------------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Result-relevant options beyond kind and model (a tokenizer hash, an endpoint): part of every step key.
        Options that only change speed (concurrency, timeouts) must stay out, or a tuning change would redo work."""
        return {}

    def base_model(self) -> ModelRef:
        """The model before fine-tuning: the reference row of the report."""
        return ModelRef(
            backend=self.spec.name, base_model=self.spec.model, model_id=self.spec.model, simulated=self.simulated
        )

    def preflight(self) -> list[str]:
        """Problems `ptst validate` can find before anything is spent (a missing model folder, a tokenizer of another
        family, an unset API key), one line each naming what to do; a line starting with "warning: " is reported as a
        warning, not an error, and one starting with "credentials: " is a missing credential (an error for `validate`
        and `run`, a warning for `ptst estimate`, which spends nothing). Must not touch the network or load weights."""
        return []

    def resource(self) -> str | None:
        """The exclusive resource this backend's work runs on ("cuda:0", "cpu"): the scheduler runs one job at a time
        per resource. None for remote backends, whose jobs run concurrently."""
        return None

    # -- work ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def estimate(self, job: TrainJob) -> Estimate:
        """Tokens and dollars of a job, computed offline before anything is spent."""

    @abstractmethod
    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
        """Run (or resume) one job. Record any external id in `ledger` *before* waiting on it; raise
        ptst.errors.JobFailed for a job that ended without a model (the runner records it and goes on)."""

    @abstractmethod
    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
        """One response per prompt, in order."""

    def generate_streaming(
        self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig, on_response: OnResponse
    ) -> None:
        """Hand responses to `on_response([(index, text), ...])` the moment they exist, in any order, each index once;
        the runner stores them there and then (one transaction per call), so a kill loses only the requests in flight
        (a remote backend: at most its concurrency; a local one: the batch being decoded). Raise as `generate` does;
        responses already handed over are kept. Default, for backends that only implement `generate`: one call, then
        all its responses at once, so a kill loses that call's responses (`generation_chunk` at most)."""
        responses = self.generate(model, prompts, cfg)
        if len(responses) != len(prompts):
            raise RuntimeError(
                f"backend {self.spec.name} returned {len(responses)} responses for {len(prompts)} prompts"
            )
        on_response(list(enumerate(responses)))

    def checkpoints(self, model: ModelRef) -> list[ModelRef]:
        """Intermediate checkpoints saved while training `model` (step in `ModelRef.meta["step"]`), oldest first, for
        evaluating along training (the paper's early-stopping comparison). Default: none."""
        return []

    # -- external jobs (`ptst cancel`) -----------------------------------------------------------------------------
    def ledger_prefix(self) -> str | None:
        """The prefix of the ledger names under which this backend records external jobs that `ptst cancel` can
        cancel (OpenAI: "openai:"); None: it has none (local training stops with the process)."""
        return None

    def cancel(self, ledger_entry: dict[str, Any]) -> str:
        """Cancel an external job recorded in the ledger (`ptst cancel`); its status afterwards, in words."""
        raise NotImplementedError(f"backend {self.kind!r} has no external jobs to cancel")

    # -- pricing (`ptst estimate` and the budget gate) -----------------------------------------------------------
    def generation_usd(
        self, prompts: Sequence[Conversation], response_tokens: float, *, fine_tuned: bool
    ) -> float | None:
        """USD of generating, for each prompt, a response of `response_tokens` tokens (an average: the estimate
        calls it once with the expected length and once with max_new_tokens). `fine_tuned`: the model is one of this
        backend's fine-tunes (APIs bill those higher). None: the price is unknown, which the estimate reports as
        such, never as zero. Default: free for a simulation, unknown otherwise (a remote API's prices are its
        backend's to know); a backend running models locally returns 0.0 and reports `gpu_hours` instead."""
        return 0.0 if self.simulated else None

    def gpu_hours(self, train_tokens: int, decode_tokens: float) -> float | None:
        """GPU hours of training on `train_tokens` (epochs included) and generating `decode_tokens`, from measured
        throughput; None for a backend that uses no GPU of the user's (an API, a simulation)."""
        return None

    def compute_hours(self, train_tokens: int, decode_tokens: float) -> ComputeHours | None:
        """The same work as `ComputeHours`: on a GPU or a CPU, with the range over the devices it could run on. By
        default `gpu_hours` on a known device (a plugin that only implements `gpu_hours` keeps working)."""
        h = self.gpu_hours(train_tokens, decode_tokens)
        return None if h is None else ComputeHours(device="gpu", hours=h, low=h, high=h)

    def evaluated_checkpoints(self, job: TrainJob, wanted: str | Sequence[int]) -> int:
        """How many intermediate checkpoints of `job` `eval.checkpoints` (`all` or a list of steps) evaluates:
        by default those saved at `save_steps` (an API that keeps its own checkpoints says how many)."""
        saved = job.hyperparameters.save_steps
        return len(saved) if wanted == "all" else len(set(saved) & set(wanted))

    def estimate_notes(self) -> list[str]:
        """Lines `ptst estimate` prints about how this backend's numbers were reached (a discount, a tokenizer
        stand-in, the throughput behind GPU hours)."""
        return []

    @classmethod
    def judge_endpoint(cls, options: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """For a rubric judge's `base_url: inherit`: the OpenAI-compatible endpoint a backend entry with these
        options talks to, and its key settings (`api_key_env`, `api_key_file`); None for a backend that has none."""
        return None


def _override(base: M, over: M) -> M:
    """`base` with the fields set in `over` (its `model_fields_set`) replaced, nested models merged the same way.

    The result's `model_fields_set` is the union of both, so a backend that sends only the fields a user set (OpenAI
    sends the rest as "auto") sees exactly the fields set in either place."""
    update: dict[str, Any] = {}
    for name in over.model_fields_set:
        new, old = getattr(over, name), getattr(base, name)
        update[name] = _override(old, new) if isinstance(new, BaseModel) and isinstance(old, BaseModel) else new
    return base.model_copy(update=update)


def create_backend(spec: BackendSpec) -> FineTuneBackend:
    from ptst.backends.registry import backend_class

    return backend_class(spec.kind)(spec)

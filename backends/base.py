"""The backend contract: what the runner asks of every vendor, and the values that cross the boundary.

A backend fine-tunes (`fine_tune`), generates (`generate`), and shows exactly what its model sees (`render`). All
values here are frozen pydantic models, so they serialise into the run store and hash into step keys.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ptst.conversation import Conversation
from ptst.templates import Template

Kind = Literal["openai", "llama2", "mistral", "mock"]

# kind -> module under ptst.backends that defines `Backend` and `Options`
BACKEND_MODULES: dict[str, str] = {
    "mock": "ptst.backends.mock",
    "openai": "ptst.backends.openai",
    "llama2": "ptst.backends.llama2",
    "mistral": "ptst.backends.mistral",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraSpec(_Frozen):
    """LoRA settings; the defaults are llama-recipes' (what the paper's Llama runs used)."""

    r: int = Field(8, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


class Hyperparameters(_Frozen):
    epochs: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_seq_len: int = Field(1024, ge=16)
    gradient_checkpointing: bool = False
    save_steps: tuple[int, ...] = ()
    lora: LoraSpec = LoraSpec()
    # OpenAI fine-tuning API only (ignored elsewhere): the API scales its own base rate.
    learning_rate_multiplier: float | None = Field(None, gt=0)
    suffix: str | None = Field(None, max_length=64)


class GenerationConfig(_Frozen):
    max_new_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int | Literal["auto"] = "auto"


class BackendSpec(BaseModel):
    """One entry of the spec's `backends:` list.

    Common fields are declared here; any other key is a backend-specific option, validated by that backend's own
    `Options` model (so `{kind: openai, base_url: ...}` stays flat for users while each backend owns its options).
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: Kind
    model: str = Field(min_length=1)
    label: str | None = Field(None, description="name shown in reports; defaults to kind")

    @property
    def name(self) -> str:
        return self.label or self.kind

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _validate_options(self) -> BackendSpec:
        backend_class(self.kind).Options.model_validate(self.options)
        return self


class Rendered(_Frozen):
    """Exactly what a backend's model sees for one conversation."""

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    input_ids: tuple[int, ...] | None = None
    labels: tuple[int, ...] | None = None  # -100 on positions that carry no loss (the prompt)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "messages": list(self.messages) if self.messages is not None else None,
            "input_ids": list(self.input_ids) if self.input_ids is not None else None,
            "labels": list(self.labels) if self.labels is not None else None,
        }


class ModelRef(_Frozen):
    """A model a backend can generate from: a base model, an OpenAI fine-tuned id, or a LoRA adapter directory."""

    backend: str
    base_model: str
    model_id: str
    adapter_dir: str | None = None
    train_template: str | None = None
    seed: int | None = None
    simulated: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)


def content_hash(obj: Any) -> str:
    """A stable hash of JSON-serialisable content: the identity of every step in the run store."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _json_default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, Conversation):
        return asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not hashable content: {type(o).__name__}")


class TrainJob(_Frozen):
    """One fine-tuning job: its content hash is the job's identity (the same job is never run or paid for twice)."""

    backend: str
    base_model: str
    train_template: str
    seed: int
    hyperparameters: Hyperparameters
    examples: tuple[Conversation, ...]
    data_hash: str

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    @property
    def key(self) -> str:
        return content_hash(
            {
                "backend": self.backend,
                "base_model": self.base_model,
                "train_template": self.train_template,
                "seed": self.seed,
                "hyperparameters": self.hyperparameters,
                "data_hash": self.data_hash,
            }
        )


class Estimate(_Frozen):
    n_examples: int
    n_tokens: int | None = None  # training tokens for one epoch
    n_billed_tokens: int | None = None  # over all epochs
    usd: float | None = None
    notes: str = ""


@runtime_checkable
class JobLedger(Protocol):
    """Durable memory for a backend's external state (an OpenAI job id, a checkpoint path).

    A backend records an external id *before* waiting on it; after a crash `get` returns it, so the job is resumed,
    never created again.
    """

    def get(self, name: str) -> dict[str, Any] | None: ...

    def put(self, name: str, value: dict[str, Any]) -> None: ...


class FineTuneBackend(Protocol):
    """What the runner needs from a vendor. Implementations live one per module in `ptst.backends`."""

    kind: ClassVar[str]
    family: ClassVar[str]  # template family: "llama2" | "mistral" | "openai" | "mock"
    modes: ClassVar[frozenset[str]]  # template modes it accepts: {"chat"} or {"chat", "text"}
    simulated: ClassVar[bool]

    def supports(self, template: Template) -> bool: ...

    def render(self, conv: Conversation) -> Rendered: ...

    def estimate(self, job: TrainJob) -> Estimate: ...

    def base_model(self) -> ModelRef: ...

    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef: ...

    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]: ...


class BackendBase:
    """Shared plumbing for backends: options parsing and the template-mode check."""

    kind: ClassVar[str] = ""
    family: ClassVar[str] = ""
    modes: ClassVar[frozenset[str]] = frozenset({"chat", "text"})
    simulated: ClassVar[bool] = False

    class Options(_Frozen):
        pass

    def __init__(self, spec: BackendSpec):
        self.spec = spec
        self.options = self.Options.model_validate(spec.options)

    def supports(self, template: Template) -> bool:
        return template.mode in self.modes

    def base_model(self) -> ModelRef:
        return ModelRef(
            backend=self.spec.name, base_model=self.spec.model, model_id=self.spec.model, simulated=self.simulated
        )


def backend_class(kind: str) -> type[BackendBase]:
    """The backend class for a kind. Importing the module is cheap: vendor SDKs load only when used."""
    try:
        module = BACKEND_MODULES[kind]
    except KeyError:
        raise ValueError(f"unknown backend kind {kind!r} (known: {', '.join(BACKEND_MODULES)})") from None
    return importlib.import_module(module).Backend  # type: ignore[no-any-return]


def create_backend(spec: BackendSpec) -> FineTuneBackend:
    return backend_class(spec.kind)(spec)  # type: ignore[return-value]

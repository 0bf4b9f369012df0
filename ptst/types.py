"""Values that cross the boundary between the core and the backends.

They are frozen pydantic models so they serialise into the run store and hash into step keys. They live in the core
(not beside the backend interface) because the spec, the plan and the store all speak them while never importing a
backend.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ptst.conversation import Conversation
from ptst.keys import job_key_v1

SEED_MAX = 2**32 - 1
"""Seeds are 32-bit (numpy, vLLM and CUDA take no more); a larger one would validate and then fail mid-run."""
BATCH_MAX = 65536


class Frozen(BaseModel):
    # NaN and infinity are refused in every float field: NaN passes no bound check and poisons hashes and metrics.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class LoraSpec(Frozen):
    """LoRA settings; the defaults are llama-recipes' (what the paper's Llama runs used)."""

    r: int = Field(8, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


class Hyperparameters(Frozen):
    epochs: int = Field(1, ge=1, le=1000)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1, le=BATCH_MAX)
    gradient_accumulation_steps: int = Field(1, ge=1)
    # step: StepLR once per epoch, the rate times lr_gamma after each epoch (llama-recipes: gamma 0.85)
    lr_scheduler: Literal["linear", "cosine", "constant", "step"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_seq_len: int = Field(1024, ge=16)
    gradient_checkpointing: bool = False
    save_steps: tuple[Annotated[int, Field(ge=1)], ...] = ()
    lora: LoraSpec = LoraSpec()
    lr_gamma: float = Field(0.85, gt=0, le=1, description="lr_scheduler: step multiplies the rate by this per epoch")
    # llama-recipes "packing": the examples end to end, cut into chunks of exactly this many tokens (the tail that
    # fills no chunk is dropped); batch_size then counts chunks, and examples in a chunk attend to each other.
    chunk_size: int | None = Field(None, ge=16, description="pack examples into fixed-size token chunks")
    # OpenAI fine-tuning API only (ignored elsewhere): the API scales its own base rate.
    learning_rate_multiplier: float | None = Field(None, gt=0)
    suffix: str | None = Field(None, max_length=64)


    @model_validator(mode="after")
    def _step_has_no_warmup(self) -> Hyperparameters:
        if self.lr_scheduler == "step" and self.warmup_ratio > 0:
            raise ValueError("lr_scheduler step (per-epoch decay, as llama-recipes) takes no warmup; set warmup_ratio: 0")
        return self


class GenerationConfig(Frozen):
    max_new_tokens: int = Field(512, ge=1, le=1_000_000)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    batch_size: Annotated[int, Field(ge=1, le=BATCH_MAX)] | Literal["auto"] = "auto"


class Rendered(Frozen):
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


class ModelRef(Frozen):
    """A model a backend can generate from: a base model, an OpenAI fine-tuned id, or a LoRA adapter directory."""

    backend: str
    base_model: str
    model_id: str
    adapter_dir: str | None = None
    train_template: str | None = None
    seed: int | None = None
    simulated: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)


class TrainJob(Frozen):
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
        return job_key_v1(
            backend=self.backend, base_model=self.base_model, train_template=self.train_template, seed=self.seed,
            hyperparameters=self.hyperparameters, data_hash=self.data_hash,
        )


class ComputeHours(Frozen):
    """A local backend's compute time for a run: `hours` at the reference throughput, `low`/`high` the range over the
    devices it could run on (equal when the device is known), on a GPU or a CPU."""

    device: Literal["gpu", "cpu"]
    hours: float
    low: float
    high: float


class Estimate(Frozen):
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

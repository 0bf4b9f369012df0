"""The shared local engine of the Llama 2 and Mistral backends: exact token-level training data, LoRA fine-tuning
with transformers + peft, and batched generation.

The two local backends differ only in how a `Conversation` becomes token ids (`llama2.py`: Meta's SentencePiece
formula; `mistral.py`: mistral-common). Everything else lives here, so both train and generate the same way:

* Rendering contract (`LocalBackend.render`): a prompt is `BOS + ids`; a training example is the prompt's ids followed
  by the answer's ids and EOS, with labels -100 on the prompt. Anything else (prompt not a token prefix of its
  training form, doubled BOS, missing EOS) is a hard `TrainingFormError`: a silently shifted loss mask would train a
  different model than the one the paper describes.
* Training (`train_lora`): LoRA via peft, AdamW (fused on CUDA), linear/cosine/constant schedule with warmup,
  gradient accumulation with the loss normalised over the whole accumulation window, bf16 on GPU / fp32 on CPU,
  optional gradient checkpointing, seeded. Speed: each micro-batch is *packed* into one row with per-example
  position ids, so no padding token is ever computed and transformers builds a block-diagonal causal mask
  (flash-attention varlen where installed): examples never attend to each other; logits are computed only at the
  supervised positions; LoRA dropout runs through a small autograd function in the activation dtype that keeps a
  one-byte mask instead of peft's float32 copy of every dropped input.
* Generation (`Generator`): prompts sorted by length, left padding, greedy or sampled, finished rows dropped from the
  batch (and its KV cache) as they stop, auto batch size that halves on out-of-memory; adapters merged into the
  base weights. `engine: vllm` hands generation to vLLM when installed.
* Several GPUs: with `nproc_per_node > 1` the backend writes the job to a file and runs `torchrun -m
  ptst.backends.hf JOBFILE` (DDP, rank 0 saves), so the runner and its SQLite store stay single-process.

torch, transformers and peft are imported inside functions only: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from ptst.types import Frozen
from ptst.backends.base import (
    FineTuneBackend,
    Estimate,
    GenerationConfig,
    Hyperparameters,
    JobLedger,
    ModelRef,
    Rendered,
    TrainJob,
)
from ptst.conversation import Conversation
from ptst.errors import BackendError, DataError, PtstError, require

IGNORE_INDEX = -100
METADATA_FILE = "ptst_adapter.json"  # written last: its presence marks a complete adapter directory
ADAPTER_DIR = "adapter"
TRAIN_LOG = "train_log.jsonl"
FORMAT = "ptst-lora-adapter/1"


# ----------------------------------------------------------------------------------------------------------------
# Rendering: the checks every training example must pass
# ----------------------------------------------------------------------------------------------------------------


class TrainingFormError(DataError):
    """A training example whose token ids break the prompt/answer contract (names the template and query)."""


def where(conv: Conversation) -> str:
    """A short locator for error messages: which template and which row."""
    q = conv.query or conv.user
    q = q if len(q) <= 48 else q[:45] + "..."
    return f"template {conv.template or '(none)'}, query {q!r}"


def clean_answer(conv: Conversation) -> str:
    """The answer as trained on: stripped (as Meta's reference encoder does), and never empty."""
    answer = (conv.answer or "").strip()
    if not answer:
        raise TrainingFormError(f"{where(conv)}: the training answer is empty; drop the row or fill its answer field")
    return answer


def text_separator(prompt: str) -> str:
    """What joins a text-mode prompt and its answer: nothing after whitespace (`...### Response:\\n`), else a space
    (`...Answer: 72`). The space is what SentencePiece turns into the answer's leading `▁`, so the prompt's own tokens
    stay a prefix of the training tokens (checked for every example)."""
    return "" if prompt[-1:].isspace() else " "


def check_prompt_ids(ids: Sequence[int], bos_id: int, what: str) -> None:
    if not ids or ids[0] != bos_id:
        raise TrainingFormError(f"{what}: the prompt's token ids do not start with BOS ({bos_id})")
    if len(ids) > 1 and ids[1] == bos_id:
        raise TrainingFormError(
            f"{what}: BOS is doubled at the start of the prompt; remove a literal BOS from the text"
        )


def supervised_labels(
    prompt_ids: Sequence[int], input_ids: Sequence[int], *, bos_id: int, eos_id: int, what: str
) -> list[int]:
    """Labels for a training example: -100 on the prompt, the token ids on the answer and its EOS.

    Raises `TrainingFormError` unless the example is exactly `prompt + answer + EOS` at the token level.
    """
    check_prompt_ids(prompt_ids, bos_id, what)
    check_prompt_ids(input_ids, bos_id, what)
    if input_ids[-1] != eos_id:
        raise TrainingFormError(f"{what}: the training form does not end with EOS ({eos_id})")
    n = len(prompt_ids)
    if len(input_ids) <= n + 1 or list(input_ids[:n]) != list(prompt_ids):
        raise TrainingFormError(
            f"{what}: the prompt's tokens are not a prefix of the training tokens (the answer boundary re-tokenises "
            "the prompt's end); end the template's text with a newline or a non-space character"
        )
    return [IGNORE_INDEX] * n + list(input_ids[n:])


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The shared local backend
# ----------------------------------------------------------------------------------------------------------------


class LocalOptions(Frozen):
    """Options of the local backends, written flat in the spec's backend entry."""

    tokenizer: str | None = Field(
        None, description="tokenizer.model file or a directory holding one (default: found beside the model)"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on GPU, float32 on CPU"
    )
    device: str | None = Field(None, description="cuda, cuda:1, cpu... (default: cuda when available)")
    engine: Literal["hf", "vllm"] = Field("hf", description="generation engine; vllm must be installed")
    nproc_per_node: int = Field(1, ge=1, description="GPUs to train on with DDP (launched through torchrun)")
    attn_implementation: str | None = Field(
        None, description="transformers attention: sdpa, flash_attention_2, eager (default: flash-attn if installed)"
    )
    batching: Literal["packed", "length_grouped", "padded"] = Field(
        "packed", description="packed: each micro-batch in one padding-free row with per-example attention"
    )
    fast_lora_dropout: bool = Field(True, description="LoRA dropout with a 1-byte mask in the activation dtype")
    merge_adapter: bool = Field(True, description="merge LoRA into the base weights for generation")
    max_generation_batch: int = Field(256, ge=1, description="upper bound of the automatic generation batch size")


class LocalBackend(FineTuneBackend):
    """A local model trained with LoRA and served by transformers (or vLLM).

    Subclasses provide the tokenizer side: `prompt_text`, `prompt_ids`, `training_text`, `training_ids`, `decode`,
    `bos_id`, `eos_id`, `tokenizer_fingerprint`.
    """

    modes: ClassVar[frozenset[str]] = frozenset({"chat", "text"})
    Options = LocalOptions
    options: LocalOptions
    # The runner may ask for larger generation chunks: big batches are where local generation gets its speed.
    generation_chunk: ClassVar[int] = 512

    def __init__(self, spec):  # type: ignore[no-untyped-def]
        super().__init__(spec)
        self._generator: Generator | None = None

    # --- tokenizer side (subclasses) ---------------------------------------------------------------------------
    bos_id: int
    eos_id: int

    def plain_text(self, conv: Conversation) -> str | None:
        return self.training_text(conv, conv.answer) if conv.answer is not None else self.prompt_text(conv)

    def prompt_text(self, conv: Conversation) -> str:
        raise NotImplementedError

    def prompt_ids(self, conv: Conversation) -> list[int]:
        raise NotImplementedError

    def training_text(self, conv: Conversation, answer: str) -> str:
        raise NotImplementedError

    def training_ids(self, conv: Conversation, answer: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def tokenizer_fingerprint(self) -> str:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        """Padding never reaches the loss or attention; EOS is a safe filler id for both families."""
        return self.eos_id

    # --- the contract ---------------------------------------------------------------------------------------------
    def render(self, conv: Conversation) -> Rendered:
        what = where(conv)
        ids = self.prompt_ids(conv)
        check_prompt_ids(ids, self.bos_id, what)
        if conv.answer is None:
            return Rendered(text=self.prompt_text(conv), input_ids=tuple(ids))
        answer = clean_answer(conv)
        full = self.training_ids(conv, answer)
        labels = supervised_labels(ids, full, bos_id=self.bos_id, eos_id=self.eos_id, what=what)
        return Rendered(text=self.training_text(conv, answer), input_ids=tuple(full), labels=tuple(labels))

    def encode_example(self, conv: Conversation) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one training conversation, checked."""
        r = self.render(conv)
        if r.labels is None:
            raise TrainingFormError(f"{where(conv)}: a training example needs an answer")
        return list(r.input_ids or ()), list(r.labels)

    def identity(self) -> dict[str, Any]:
        """Options that change results are part of every step key. Device, process count, attention kernel and
        generation engine are not: they change speed and float rounding, not the experiment."""
        o = self.options
        return {
            "tokenizer_sha256": self.tokenizer_fingerprint(),
            "dtype": o.dtype,
            "batching": o.batching,
            "fast_lora_dropout": o.fast_lora_dropout,
        }

    def estimate(self, job: TrainJob) -> Estimate:
        encoded = [self.encode_example(c) for c in job.examples]
        _, audit = prepare_examples(encoded, job.hyperparameters.max_seq_len)
        return Estimate(
            n_examples=len(job.examples),
            n_tokens=audit.n_tokens,
            n_billed_tokens=audit.n_tokens * job.hyperparameters.epochs,
            usd=0.0,
            notes=f"local LoRA training, no API cost; {audit.describe()}",
        )

    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
        workdir = Path(workdir)
        done = read_adapter_metadata(workdir / ADAPTER_DIR)
        if done is not None and done.get("job_key") == job.key:
            return self._model_ref(job, workdir, done)
        encoded = [self.encode_example(c) for c in job.examples]
        examples, audit = prepare_examples(encoded, job.hyperparameters.max_seq_len)
        from ptst.progress import log

        log(f"  training data ({self.kind}, {job.train_template}): {audit.describe()}")
        name = f"{self.kind}:{job.key}"
        ledger.put(name, {"status": "running", "workdir": str(workdir)})
        settings = TrainSettings(
            model=self.spec.model,
            seed=job.seed,
            hyperparameters=job.hyperparameters,
            dtype=self.options.dtype,
            device=self.options.device,
            attn_implementation=self.options.attn_implementation,
            batching=self.options.batching,
            fast_lora_dropout=self.options.fast_lora_dropout,
            pad_id=self.pad_id,
            metadata={
                "job_key": job.key,
                "backend": self.kind,
                "base_model": self.spec.model,
                "train_template": job.train_template,
                "seed": job.seed,
                "data_hash": job.data_hash,
                "n_examples": len(job.examples),
                "audit": audit.as_dict(),
                "options": self.identity(),
            },
        )
        if self.options.nproc_per_node > 1:
            launch_distributed(settings, examples, workdir, self.options.nproc_per_node)
        else:
            train_lora(settings, examples, workdir)
        meta = read_adapter_metadata(workdir / ADAPTER_DIR)
        if meta is None:
            raise BackendError(f"training finished but left no adapter in {workdir / ADAPTER_DIR}; see the log above")
        ledger.put(name, {"status": "succeeded", "workdir": str(workdir)})
        return self._model_ref(job, workdir, meta)

    def _model_ref(self, job: TrainJob, workdir: Path, meta: dict[str, Any]) -> ModelRef:
        return ModelRef(
            backend=self.spec.name,
            base_model=self.spec.model,
            model_id=f"{self.spec.model}+lora-{job.key[:12]}",
            adapter_dir=str(workdir / ADAPTER_DIR),
            train_template=job.train_template,
            seed=job.seed,
            meta={"checkpoints": meta.get("checkpoints", {}), "final_loss": meta.get("train", {}).get("final_loss")},
        )

    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
        ids = []
        for conv in prompts:
            if conv.answer is not None:
                conv = conv.without_answer()
            p = self.prompt_ids(conv)
            check_prompt_ids(p, self.bos_id, where(conv))
            ids.append(p)
        if self.options.engine == "vllm":
            out = generate_vllm(model, ids, cfg, self.options, eos_id=self.eos_id)
        else:
            gen = self._generator_for(model)
            out = gen.generate(ids, cfg, eos_id=self.eos_id, pad_id=self.pad_id)
        return [self.decode(o) for o in out]

    def _generator_for(self, model: ModelRef) -> Generator:
        """The runner calls `generate` repeatedly with chunks for one ModelRef: keep that model loaded."""
        key = (model.base_model, model.adapter_dir)
        if self._generator is None or self._generator.key != key:
            if self._generator is not None:
                self._generator.close()
                self._generator = None
            self._generator = Generator.load(
                model.base_model,
                model.adapter_dir,
                dtype=self.options.dtype,
                device=self.options.device,
                attn_implementation=self.options.attn_implementation,
                merge=self.options.merge_adapter,
                max_batch=self.options.max_generation_batch,
            )
        return self._generator


# ----------------------------------------------------------------------------------------------------------------
# Training data preparation and audit
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """What the trainer will see, printed once per job: silent truncation is how loss masks go wrong unnoticed."""

    n_examples: int
    n_tokens: int
    n_supervised: int
    n_truncated: int
    n_dropped: int
    max_len: int
    max_seq_len: int

    @property
    def supervised_fraction(self) -> float:
        return self.n_supervised / self.n_tokens if self.n_tokens else 0.0

    def describe(self) -> str:
        return (
            f"{self.n_examples} examples, {self.n_tokens:,} tokens, supervised {self.supervised_fraction:.1%}, "
            f"max length {self.max_len} (limit {self.max_seq_len}), truncated {self.n_truncated}, "
            f"dropped {self.n_dropped} (no answer token left)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples, "n_tokens": self.n_tokens, "n_supervised": self.n_supervised,
            "supervised_fraction": round(self.supervised_fraction, 6), "n_truncated": self.n_truncated,
            "n_dropped": self.n_dropped, "max_len": self.max_len, "max_seq_len": self.max_seq_len,
        }


def prepare_examples(
    encoded: Sequence[tuple[list[int], list[int]]], max_seq_len: int
) -> tuple[list[tuple[list[int], list[int]]], Audit]:
    """Truncate to `max_seq_len` from the right (the prompt is kept whole; the answer's tail and EOS go), and drop
    examples left without a supervised token. Returns the examples and their audit."""
    out: list[tuple[list[int], list[int]]] = []
    n_trunc = n_drop = max_len = 0
    for ids, labels in encoded:
        max_len = max(max_len, len(ids))
        if len(ids) > max_seq_len:
            n_trunc += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if sum(1 for x in labels[1:] if x != IGNORE_INDEX) == 0:
            n_drop += 1
            continue
        out.append((ids, labels))
    n_tokens = sum(len(i) for i, _ in out)
    n_sup = sum(sum(1 for x in lab if x != IGNORE_INDEX) for _, lab in out)
    return out, Audit(len(encoded), n_tokens, n_sup, n_trunc, n_drop, max_len, max_seq_len)


def plan_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, grouping: str
) -> list[list[int]]:
    """The example indices of each micro-batch of one epoch, reproducible from (seed, epoch).

    `packed`/`padded`: a plain shuffle (same composition as a reference padded loop). `length_grouped`: shuffle,
    cut into mega-batches of 64 batches, sort each by length and shuffle the resulting batches, so padded batches
    hold similar lengths while the epoch's order stays random.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if grouping == "length_grouped":
        mega = batch_size * 64
        grouped: list[list[int]] = []
        for i in range(0, len(order), mega):
            chunk = sorted(order[i : i + mega], key=lambda j: -lengths[j])
            grouped += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        rng.shuffle(grouped)
        return grouped
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ----------------------------------------------------------------------------------------------------------------
# torch helpers (lazy)
# ----------------------------------------------------------------------------------------------------------------


def _torch():  # type: ignore[no-untyped-def]
    return require("torch", "the local backends (llama2, mistral)", "local")


def resolve_device(device: str | None) -> str:
    torch = _torch()
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(
                f"device {device!r} was asked for but no CUDA GPU is visible; set device: cpu or fix CUDA"
            )
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):  # type: ignore[no-untyped-def]
    torch = _torch()
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def default_attn_implementation(device: str) -> str:
    """flash-attention's varlen kernels make packed training truly padding-free; sdpa is the portable default."""
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def local_model_dir(model: str) -> Path:
    """The local directory of a model: the path itself, or the model id's snapshot in the local HF cache.

    Resolving the cache ourselves (`snapshot_download(local_files_only=True)`) keeps transformers from probing the
    hub at all (its adapter auto-detection does, whatever `local_files_only` says), so a missing model fails at once.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - not cached, malformed id, hub library missing: all the same to the user
        raise BackendError(
            f"model {model!r} cannot be loaded offline (not a local directory, not in the local Hugging Face cache: "
            f"{_first_line(e)}); download it first (huggingface-cli download {model}) or set model: to a local "
            "HF-format directory"
        ) from None


def load_causal_lm(model: str, *, dtype, device: str, attn_implementation: str | None):  # type: ignore[no-untyped-def]
    """Load a base model from a local directory or the local HF cache only (never the network)."""
    require("transformers", "the local backends (llama2, mistral)", "local")
    from transformers import AutoModelForCausalLM

    path = local_model_dir(model)
    try:
        m = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=dtype,
            local_files_only=True,
            attn_implementation=attn_implementation or default_attn_implementation(device),
        )
    except (OSError, ValueError) as e:
        raise BackendError(
            f"model {model} cannot be loaded from {path} ({_first_line(e)}); it must be an HF-format model "
            "directory (config.json + weights)"
        ) from None
    return m.to(device)


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    text = s[0] if s else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def is_oom(e: BaseException) -> bool:
    torch = _torch()
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    torch = _torch()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# Fast LoRA dropout
# ----------------------------------------------------------------------------------------------------------------

_DROPOUT_FN: Any = None


def dropout_lora_a():  # type: ignore[no-untyped-def]
    """`h = (x * mask * scale) @ A.T` as one autograd function that saves x, a bool mask and A.

    peft casts x to the adapter's float32, drops it into a new float32 tensor and keeps that (plus the mask) for
    backward, separately for q_proj and v_proj: about 10 bytes per activation element. Here x (2 bytes in bf16, one
    tensor shared by q_proj and v_proj) and a 1-byte mask per layer are kept, and the dropped input is recomputed
    in backward in the activation dtype. Same distribution as peft's `Dropout(x)`: element-wise on x, scaled 1/(1-p).
    """
    global _DROPOUT_FN
    if _DROPOUT_FN is None:
        torch = _torch()

        class DropoutLoraA(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, mask, a, scale):  # type: ignore[no-untyped-def]
                ctx.save_for_backward(x, mask, a)
                ctx.scale = scale
                return (x * mask).mul_(scale) @ a.t()

            @staticmethod
            def backward(ctx, gh):  # type: ignore[no-untyped-def]
                x, mask, a = ctx.saved_tensors
                gx = ga = None
                if ctx.needs_input_grad[0]:
                    gx = (gh @ a).mul_(mask).mul_(ctx.scale)
                if ctx.needs_input_grad[2]:
                    xd = (x * mask).mul_(ctx.scale)
                    ga = gh.reshape(-1, gh.shape[-1]).t() @ xd.reshape(-1, xd.shape[-1])
                return gx, None, ga, None

        _DROPOUT_FN = DropoutLoraA
    return _DROPOUT_FN


def lora_delta(x, a, b, scaling: float, p: float, mask=None):  # type: ignore[no-untyped-def]
    """The LoRA branch `B(A(dropout(x))) * scaling`, computed in x's dtype (adapter weights stay float32 for AdamW)."""
    torch = _torch()
    a = a.to(x.dtype)
    b = b.to(x.dtype)
    if p > 0:
        if mask is None:
            mask = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1.0 - p)
        h = dropout_lora_a().apply(x, mask.to(torch.bool), a, 1.0 / (1.0 - p))
    else:
        h = x @ a.t()
    return (h @ b.t()) * scaling


def install_fast_lora(model) -> int:  # type: ignore[no-untyped-def]
    """Route every vanilla peft LoRA Linear through `lora_delta` (training only). Returns the number patched."""
    import types

    torch = _torch()
    from peft.tuners.lora import Linear as LoraLinear

    def forward(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            drop = self.lora_dropout[name]
            p = float(drop.p) if isinstance(drop, torch.nn.Dropout) and self.training else 0.0
            delta = lora_delta(x, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], p)
            result = result + delta.to(result.dtype)
        return result

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and not getattr(module, "lora_variant", None) and not module.use_dora.get(
            "default", False
        ):
            module.forward = types.MethodType(forward, module)
            n += 1
    return n


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


class TrainSettings(Frozen):
    """Everything `train_lora` needs, serialisable for the torchrun worker."""

    model: str
    seed: int
    hyperparameters: Hyperparameters
    dtype: str = "auto"
    device: str | None = None
    attn_implementation: str | None = None
    batching: Literal["packed", "length_grouped", "padded"] = "packed"
    fast_lora_dropout: bool = True
    pad_id: int = 2
    max_steps: int | None = None  # benchmarks: stop early
    metadata: dict[str, Any] = Field(default_factory=dict)


def collate(  # type: ignore[no-untyped-def]
    batch: Sequence[tuple[list[int], list[int]]], batching: str, pad_id: int, device: str
):
    """Model inputs and next-token targets of one micro-batch.

    packed: one row, position ids restart at 0 per example and no attention mask, which transformers turns into a
    per-example (block-diagonal) causal mask; logits only at positions whose next token is supervised.
    padded: right-padded rows with an attention mask (the reference layout; length_grouped uses it too).
    Returns (model kwargs, targets at the kept positions, number of real tokens).
    """
    torch = _torch()
    if batching == "packed":
        ids = [t for x, _ in batch for t in x]
        labels = [t for _, lab in batch for t in lab]
        pos = [p for x, _ in batch for p in range(len(x))]
        # position i predicts token i+1; an example's last position would predict the next example's BOS: the
        # label there is the next example's first label, always -100 (its prompt), so it is never kept.
        nxt = labels[1:] + [IGNORE_INDEX]
        keep = [i for i, t in enumerate(nxt) if t != IGNORE_INDEX]
        kw = {
            "input_ids": torch.tensor([ids], device=device),
            "position_ids": torch.tensor([pos], device=device),
            "logits_to_keep": torch.tensor(keep, device=device),
        }
        targets = torch.tensor([nxt[i] for i in keep], device=device)
        return kw, targets, len(ids)
    width = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for r, (x, lab) in enumerate(batch):
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
        labels[r, : len(x)] = torch.tensor(lab)
    targets = labels[:, 1:]
    kw = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return kw, targets.to(device), sum(len(x) for x, _ in batch)


def micro_loss(model, kw, targets):  # type: ignore[no-untyped-def]
    """Summed cross-entropy over the supervised tokens of one micro-batch (float32 logits), and their count."""
    torch = _torch()
    out = model(**kw, use_cache=False)
    logits = out.logits
    if "logits_to_keep" in kw:
        logits = logits[0]
        tgt = targets
    else:
        logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        tgt = targets.reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.float(), tgt, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((tgt != IGNORE_INDEX).sum())


def build_lora_model(settings: TrainSettings, device: str, base=None):  # type: ignore[no-untyped-def]
    """The base model (loaded from `settings.model`, or `base` when given: benchmarks pass a random-weight model built
    in memory) with fresh LoRA adapters, seeded."""
    torch = _torch()
    require("peft", "LoRA fine-tuning", "local")
    from peft import LoraConfig, get_peft_model

    hp = settings.hyperparameters
    dtype = resolve_dtype(settings.dtype, device)
    torch.manual_seed(settings.seed)  # LoRA A's initialisation is random: seed it
    if base is None:
        model = load_causal_lm(
            settings.model, dtype=dtype, device=device, attn_implementation=settings.attn_implementation
        )
    else:
        model = base
    model.config.use_cache = False
    if hp.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = LoraConfig(
        r=hp.lora.r,
        lora_alpha=hp.lora.alpha,
        lora_dropout=hp.lora.dropout,
        target_modules=list(hp.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(settings.seed)
    with warnings.catch_warnings():  # peft reads a transformers attribute that now warns on every call
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, cfg)
    if settings.fast_lora_dropout:
        install_fast_lora(model)
    return model


def train_lora(
    settings: TrainSettings,
    examples: Sequence[tuple[list[int], list[int]]],
    outdir: Path,
    *,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    base=None,  # type: ignore[no-untyped-def]
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter and save it (safetensors + metadata, metadata last) under `outdir/adapter`.

    Runs as one process, or as one rank of a torchrun DDP group (`WORLD_SIZE` > 1): every rank walks the same
    seeded batch plan and takes its share of each micro-batch; the loss is summed and divided by the supervised
    tokens of the whole accumulation window on all ranks, so the update equals the single-process one.
    Returns the training summary written into the metadata.
    """
    torch = _torch()
    hp = settings.hyperparameters
    outdir = Path(outdir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(settings.device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)

    model = build_lora_model(settings, device, base)
    model.train()
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.startswith("cuda") else None
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt_kw: dict[str, Any] = {"lr": hp.learning_rate, "weight_decay": hp.weight_decay}
    if device.startswith("cuda"):
        opt_kw["fused"] = True
    optimizer = torch.optim.AdamW(params, **opt_kw)

    lengths = [len(x) for x, _ in examples]
    plans = [plan_batches(lengths, hp.batch_size, settings.seed, e, settings.batching) for e in range(hp.epochs)]
    windows = [
        plan[i : i + hp.gradient_accumulation_steps]
        for plan in plans
        for i in range(0, len(plan), hp.gradient_accumulation_steps)
    ]
    if settings.max_steps is not None:
        windows = windows[: settings.max_steps]
    total_steps = len(windows)
    from transformers import get_scheduler

    scheduler = get_scheduler(
        hp.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(hp.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    grouping = "padded" if settings.batching == "length_grouped" else settings.batching
    save_steps = set(hp.save_steps)
    checkpoints: dict[str, str] = {}
    log_path = outdir / TRAIN_LOG
    if rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    losses: list[float] = []
    n_tokens_total = 0
    t0 = time.perf_counter()

    from ptst.progress import progress_bar

    with contextlib.ExitStack() as stack:
        advance: Callable[..., None] = (lambda *a, **k: None)
        if rank == 0:
            title = f"train {Path(settings.model).name} (LoRA r={hp.lora.r})"
            advance = stack.enter_context(progress_bar(title, total_steps))
        for step, window in enumerate(windows, start=1):
            t_step = time.perf_counter()
            # this rank's share of each micro-batch
            shares = [mb[rank::world] for mb in window]
            n_sup = sum(sum(1 for t in examples[j][1][1:] if t != IGNORE_INDEX) for mb in window for j in mb)
            step_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on device: one sync per step
            step_tokens = 0
            for k, share in enumerate(shares):
                weight = 1.0
                if not share:
                    if world == 1:
                        continue
                    # a rank without examples in this micro-batch still joins DDP's gradient exchange
                    share, weight = window[k][:1], 0.0
                batch = [examples[j] for j in share]
                kw, targets, ntok = collate(batch, grouping, settings.pad_id, device)
                sync = world == 1 or k == len(shares) - 1
                ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
                try:
                    with ctx:
                        loss_sum, _ = micro_loss(ddp_model, kw, targets)
                        # DDP averages gradients over ranks; scale so the result is sum / window tokens.
                        (loss_sum * (weight * world / n_sup)).backward()
                except Exception as e:
                    if is_oom(e):
                        raise BackendError(
                            f"out of GPU memory training {settings.model} at batch_size {hp.batch_size} "
                            f"(longest example {max(len(x) for x, _ in batch)} tokens): lower batch_size and raise "
                            "gradient_accumulation_steps, set gradient_checkpointing: true, or lower max_seq_len"
                        ) from None
                    raise
                step_loss += weight * loss_sum.detach().double()
                step_tokens += int(weight) * ntok
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if world > 1:
                t = torch.stack([step_loss, torch.tensor(float(step_tokens), dtype=torch.float64, device=device)])
                torch.distributed.all_reduce(t)
                step_loss, step_tokens = t[0], int(t[1])
            loss = float(step_loss) / n_sup
            losses.append(loss)
            n_tokens_total += step_tokens
            dt = time.perf_counter() - t_step
            rec = {
                "step": step,
                "loss": round(loss, 6),
                "lr": lr,
                "tokens": step_tokens,
                "seconds": round(dt, 6),
                "tokens_per_s": round(step_tokens / dt, 1) if dt > 0 else None,
            }
            if rank == 0:
                with log_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                advance(1, info=f"loss {loss:.4f}  {rec['tokens_per_s'] or 0:,.0f} tok/s")
                if step in save_steps and step != total_steps:
                    ck = outdir / f"checkpoint-{step}"
                    _save_adapter(model, ck, settings, {"step": step, "loss": loss}, {})
                    checkpoints[str(step)] = str(ck)
            if on_step is not None:
                on_step(rec)
    seconds = time.perf_counter() - t0
    summary = {
        "steps": total_steps,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "tokens": n_tokens_total,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(n_tokens_total / seconds, 1) if seconds > 0 else None,
        "world_size": world,
    }
    if rank == 0:
        if total_steps in save_steps:
            checkpoints[str(total_steps)] = str(outdir / ADAPTER_DIR)
        _save_adapter(model, outdir / ADAPTER_DIR, settings, summary, checkpoints)
    return summary


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ptst", "torch", "transformers", "peft", "safetensors", "sentencepiece", "mistral_common"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _save_adapter(  # type: ignore[no-untyped-def]
    model, directory: Path, settings: TrainSettings, train: dict[str, Any], checkpoints: dict[str, str]
) -> None:
    """Adapter weights (safetensors) first, the metadata file last and atomically: a directory with a metadata file
    is a complete adapter, so an interrupted save is simply redone."""
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / METADATA_FILE
    if meta_path.exists():
        meta_path.unlink()
    model.save_pretrained(str(directory), safe_serialization=True)
    meta = {
        "format": FORMAT,
        **settings.metadata,
        "base_model": settings.model,
        "hyperparameters": settings.hyperparameters.model_dump(mode="json"),
        "batching": settings.batching,
        "fast_lora_dropout": settings.fast_lora_dropout,
        "train": train,
        "checkpoints": checkpoints,
        "library_versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = directory / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, meta_path)


def read_adapter_metadata(directory: Path) -> dict[str, Any] | None:
    p = Path(directory) / METADATA_FILE
    if not p.is_file() or not (Path(directory) / "adapter_model.safetensors").is_file():
        return None
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# Several GPUs: torchrun worker
# ----------------------------------------------------------------------------------------------------------------


def launch_distributed(
    settings: TrainSettings, examples: Sequence[tuple[list[int], list[int]]], outdir: Path, nproc: int
) -> None:
    """Run `train_lora` under torchrun with `nproc` processes (DDP); the job travels in a JSON file."""
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=outdir, delete=False, prefix="job-") as f:
        json.dump({"settings": settings.model_dump(mode="json"), "examples": examples, "outdir": str(outdir)}, f)
        jobfile = f.name
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "ptst.backends.hf", jobfile,
    ]
    try:
        proc = subprocess.run(cmd, check=False)
    finally:
        Path(jobfile).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BackendError(
            f"distributed training ({nproc} processes) failed with exit code {proc.returncode}; see the worker "
            "output above, or set nproc_per_node: 1"
        )


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of one torchrun rank: `python -m ptst.backends.hf JOBFILE`."""
    torch = _torch()
    job = json.loads(Path(argv[0]).read_text())
    settings = TrainSettings.model_validate(job["settings"])
    examples = [(list(x), list(y)) for x, y in job["examples"]]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        cuda = resolve_device(settings.device).startswith("cuda")
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        train_lora(settings, examples, Path(job["outdir"]))
    finally:
        if world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


class Generator:
    """A loaded model (base + adapter, merged when possible) that generates for many prompt batches."""

    def __init__(self, key: tuple[str, str | None], model, device: str, max_batch: int):  # type: ignore[no-untyped-def]
        self.key = key
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self._batch_size: int | None = None  # learnt: the largest size that fitted

    @classmethod
    def load(
        cls,
        base_model: str,
        adapter_dir: str | None,
        *,
        dtype: str = "auto",
        device: str | None = None,
        attn_implementation: str | None = None,
        merge: bool = True,
        max_batch: int = 256,
    ) -> Generator:
        dev = resolve_device(device)
        model = load_causal_lm(
            base_model, dtype=resolve_dtype(dtype, dev), device=dev, attn_implementation=attn_implementation
        )
        if adapter_dir is not None:
            require("peft", "loading a LoRA adapter", "local")
            from peft import PeftModel

            if read_adapter_metadata(Path(adapter_dir)) is None:
                raise BackendError(f"adapter directory {adapter_dir} is missing or incomplete; re-run the fine-tune")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = PeftModel.from_pretrained(model, adapter_dir)
            if merge:
                model = model.merge_and_unload()
        model.eval()
        return cls((base_model, adapter_dir), model, dev, max_batch)

    def close(self) -> None:
        dev = self.device
        self.model = None
        _free_memory(dev)

    def auto_batch_size(self, n: int, max_len: int, max_new_tokens: int) -> int:
        """As many rows as the KV cache of `max_len + max_new_tokens` tokens fits in 70% of free GPU memory."""
        if self._batch_size is not None:
            return max(1, min(n, self._batch_size))
        torch = _torch()
        if not self.device.startswith("cuda"):
            return max(1, min(n, 32, self.max_batch))
        cfg = self.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_token = 2 * cfg.num_hidden_layers * heads * head_dim * self.model.dtype.itemsize
        per_row = per_token * (max_len + max_new_tokens) * 1.3  # + activations and logits
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return max(1, min(n, self.max_batch, int(0.7 * free / per_row)))

    def generate(
        self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, *, eos_id: int, pad_id: int
    ) -> list[list[int]]:
        """Generated token ids (without EOS) for each prompt, in input order."""
        torch = _torch()
        if not prompts:
            return []
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows early
        fixed = cfg.batch_size if isinstance(cfg.batch_size, int) else None
        bs = fixed or self.auto_batch_size(len(prompts), len(prompts[order[0]]), cfg.max_new_tokens)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        out: list[list[int] | None] = [None] * len(prompts)
        i = 0
        while i < len(order):
            idx = order[i : i + bs]
            try:
                with torch.inference_mode():
                    batch = [list(prompts[j]) for j in idx]
                    res = decode_batch(self.model, batch, cfg, eos_id=eos_id, pad_id=pad_id, generator=gen)
            except Exception as e:
                if not is_oom(e):
                    raise
                _free_memory(self.device)
                if bs == 1:
                    raise BackendError(
                        f"out of GPU memory generating at batch size 1 (prompt of {len(prompts[idx[0]])} tokens + "
                        f"max_new_tokens {cfg.max_new_tokens}): lower max_new_tokens, use a smaller dtype or a "
                        "larger GPU"
                    ) from None
                bs = max(1, bs // 2)
                self._batch_size = bs
                continue
            for j, r in zip(idx, res):
                out[j] = r
            i += len(idx)
        return [o or [] for o in out]


def select_next(logits, cfg: GenerationConfig, generator):  # type: ignore[no-untyped-def]
    """Greedy at temperature 0; otherwise temperature + nucleus (top-p) sampling."""
    torch = _torch()
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        cum = sp.cumsum(-1)
        sp[(cum - sp) > cfg.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


PRUNE_EVERY = 4  # decoding steps between checks for finished rows (each check is one host sync)


def decode_batch(  # type: ignore[no-untyped-def]
    model, batch: list[list[int]], cfg: GenerationConfig, *, eos_id: int, pad_id: int, generator
) -> list[list[int]]:
    """Left-padded prefill, then token-by-token decoding with a KV cache.

    Tokens stay on the device until the end; every few steps one host sync checks for finished rows, and once an
    eighth of the live rows have produced EOS they are dropped from the batch and the KV cache, so long answers do
    not drag short ones. A row's output is everything before its first EOS.
    """
    torch = _torch()
    from transformers import DynamicCache

    device = next(model.parameters()).device
    n = len(batch)
    width = max(len(x) for x in batch)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for r, x in enumerate(batch):
        ids[r, width - len(x) :] = torch.tensor(x)
        attn[r, width - len(x) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
    )
    nxt = select_next(out.logits[:, -1], cfg, generator)
    last_pos = pos[:, -1]
    max_new = cfg.max_new_tokens
    tokens = torch.full((n, max_new), eos_id, dtype=torch.long, device=device)  # by original row
    length = torch.full((n,), max_new, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # original row of each live batch position
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(max_new):
        tokens[rows, step] = nxt
        is_eos = nxt == eos_id
        length[rows] = torch.where(is_eos & ~done, torch.full_like(nxt, step), length[rows])
        done = done | is_eos
        if step == max_new - 1:
            break
        if step % PRUNE_EVERY == PRUNE_EVERY - 1:
            n_done = int(done.sum())
            if n_done == len(done):
                break
            if n_done and n_done * 8 >= len(done):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                attn, nxt, last_pos, rows, done = attn[keep], nxt[keep], last_pos[keep], rows[keep], done[keep]
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=-1)
        last_pos = last_pos + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=attn,
            position_ids=last_pos[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        nxt = select_next(out.logits[:, -1], cfg, generator)
    lengths = length.tolist()
    return [row[:k] for row, k in zip(tokens.tolist(), lengths)]


_VLLM: dict[str, Any] = {}


def generate_vllm(
    model: ModelRef, prompts: list[list[int]], cfg: GenerationConfig, options: LocalOptions, *, eos_id: int
) -> list[list[int]]:
    """High-throughput generation through vLLM (`engine: vllm`), the adapter served as a LoRA request.

    Token ids in, token ids out, so the rendering stays ptst's own. The engine is built once per base model and
    kept; adapters are swapped per request. Not exercised by the test suite (needs a GPU and vLLM).
    """
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise PtstError("engine: vllm needs vLLM installed (pip install vllm), or set engine: hf") from None
    base = str(local_model_dir(model.base_model))
    if _VLLM.get("base") != base:
        _VLLM.clear()
        _VLLM["base"] = base
        _VLLM["llm"] = LLM(
            model=base, dtype="auto" if options.dtype == "auto" else options.dtype, enable_lora=True,
            max_lora_rank=64, seed=cfg.seed,
        )
    llm = _VLLM["llm"]
    params = SamplingParams(
        temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=cfg.seed,
        stop_token_ids=[eos_id],
    )
    lora = None
    if model.adapter_dir is not None:
        ids = _VLLM.setdefault("adapters", {})
        ids.setdefault(model.adapter_dir, len(ids) + 1)
        lora = LoRARequest(f"adapter-{ids[model.adapter_dir]}", ids[model.adapter_dir], model.adapter_dir)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, lora_request=lora)
    return [[t for t in o.outputs[0].token_ids if t != eos_id] for o in outs]


if __name__ == "__main__":  # torchrun worker
    sys.exit(worker_main(sys.argv[1:]))

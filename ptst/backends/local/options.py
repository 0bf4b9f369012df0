"""The options of the local backends (`kind: llama2`, `mistral`, `hf`), written flat in the spec's backend entry.

Which of them change results (and so keys) is `LocalBackend.identity`'s to say; the rest change speed or memory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ptst.backends.base import BackendOptions


class LocalOptions(BackendOptions):
    """Options of the local backends, written flat in the spec's backend entry."""

    tokenizer: str | None = Field(
        None, description="tokenizer.model file or a directory holding one (default: found beside the model)"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="of the frozen base (LoRA weights and optimizer state stay float32); auto: bfloat16 on a "
        "GPU and on a CPU with AVX-512 BF16 or AMX (detected at run time), else float32"
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for training and generation (default: PTST_THREADS, else the cores "
        "left free by the 1-minute load average, measured as each job starts)"
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
    max_tokens_per_forward: int | None = Field(
        None, ge=16, description="split each training micro-batch into forwards of at most this many tokens (whole "
        "examples): bounds activation memory (CPU, small GPUs) without changing the update"
    )
    merge_adapter: bool = Field(
        False, description="generate from a private copy of the base with LoRA merged in (faster decoding, one more "
        "model in memory); default: the adapter on top of the process's one resident base model"
    )
    max_generation_batch: int = Field(256, ge=1, description="upper bound of the automatic generation batch size")
    download: bool = Field(
        False, description="fetch a hub id that is not in the local Hugging Face cache when the run starts (needs "
        "internet); without it such a hub id is a preflight error"
    )
    adapter: str | None = Field(
        None, description="a ptst LoRA adapter directory (a run's models/KEY/adapter) to evaluate as this backend's "
        "model, for specs without `train`; trained on `model`, checked against its metadata file"
    )

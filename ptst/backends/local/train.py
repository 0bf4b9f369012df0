"""LoRA training: the settings, the model with fresh adapters, and `train_lora`, which runs the recipe
(`recipe.py`: setup, step, checkpoint) in one process or as one rank of a torchrun DDP group.

AdamW (fused on CUDA), linear/cosine/constant schedule with warmup, gradient accumulation with the loss normalised
over the whole accumulation window; the frozen base in bf16 on GPU and on CPUs that multiply bf16 natively (fp32
elsewhere), LoRA weights and optimizer state in fp32; optional gradient checkpointing, seeded. Each micro-batch is
packed into one row with per-example position ids (see `data.collate`); logits are computed only at the supervised
positions.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ptst.backends.local.adapters import quiet_peft
from ptst.backends.local.lora_dropout import install_fast_lora
from ptst.backends.local.models import (
    check_transformers,
    import_torch,
    load_causal_lm,
    resolve_device,
    resolve_dtype,
)
from ptst.backends.local.recipe import CPU_TOKENS_PER_FORWARD, LoraRecipe, Rank, micro_loss
from ptst.backends.local.resident import detach_adapter, resident_base
from ptst.errors import require
from ptst.types import Frozen, Hyperparameters

__all__ = ["CPU_TOKENS_PER_FORWARD", "TrainSettings", "build_lora_model", "micro_loss", "train_lora"]

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
    max_tokens_per_forward: int | None = None  # split a micro-batch into forwards of at most this many tokens
    threads: int | None = None  # CPU threads (None: cpu.thread_count's automatic choice)
    metadata: dict[str, Any] = Field(default_factory=dict)



def build_lora_model(settings: TrainSettings, device: str, base=None):  # type: ignore[no-untyped-def]
    """The base model (loaded from `settings.model`, or `base` when given: benchmarks pass a random-weight model built
    in memory) with fresh LoRA adapters, seeded."""
    torch = import_torch()
    check_transformers()
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
        lora_alpha=hp.lora.alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha works and is ours
        lora_dropout=hp.lora.dropout,
        target_modules=list(hp.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(settings.seed)
    with quiet_peft():
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
    resume: bool = True,
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter and save it (safetensors + metadata, metadata last) under `outdir/adapter`.

    Runs as one process, or as one rank of a torchrun DDP group (`WORLD_SIZE` > 1): every rank walks the same
    seeded batch plan and takes its share of each micro-batch; the loss is summed and divided by the supervised
    tokens of the whole accumulation window on all ranks, so the update equals the single-process one.
    With `resume` (the default), a job interrupted after a `save_steps` checkpoint continues from the latest one
    (see `resume.py`) instead of starting over. Returns the training summary written into the metadata.
    """
    torch = import_torch()
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

    # One process: the process's resident base model carries the adapter while it trains and is handed back without
    # it (see resident.py); a torchrun rank is its own process and loads its own.
    resident = base is None and world == 1
    if resident:
        base = resident_base(settings.model, dtype=resolve_dtype(settings.dtype, device), device=device,
                             attn_implementation=settings.attn_implementation)
    model = build_lora_model(settings, device, base)
    extra: dict[str, Any] = {"dtype": str(resolve_dtype(settings.dtype, device)).removeprefix("torch.")}
    if device == "cpu":
        from ptst.backends.local.cpu import apply_threads

        extra["threads"] = apply_threads(settings.threads)
    recipe = LoraRecipe(model, settings, examples, outdir, Rank(device, world, rank, local_rank), on_step=on_step,
                        resume=resume, extra_summary=extra)
    try:
        return recipe.run()
    finally:
        if resident:
            detach_adapter(model)
        if device == "cpu":
            from ptst.backends.local.cpu import trim_heap

            del recipe, model
            trim_heap()

"""The explicit LoRA training loop: one process or one rank of a torchrun DDP group.

AdamW (fused on CUDA), linear/cosine/constant schedule with warmup, gradient accumulation with the loss normalised
over the whole accumulation window, bf16 on GPU / fp32 on CPU, optional gradient checkpointing, seeded. Each
micro-batch is packed into one row with per-example position ids (see `data.collate`); logits are computed only at
the supervised positions.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from ptst.backends.local.adapters import ADAPTER_DIR, TRAIN_LOG, quiet_peft, read_train_log, save_adapter
from ptst.backends.local.data import collate, pack_chunks, plan_batches, split_by_tokens
from ptst.backends.local.lora_dropout import install_fast_lora
from ptst.backends.local.models import (
    check_transformers,
    import_torch,
    is_oom,
    load_causal_lm,
    resolve_device,
    resolve_dtype,
)
from ptst.backends.local.render import IGNORE_INDEX
from ptst.backends.local.resident import detach_adapter, resident_base
from ptst.backends.local.resume import (
    CHECKPOINT_PREFIX,
    find_resume_checkpoint,
    restore,
    save_rng_state,
    save_trainer_state,
    settings_fingerprint,
)
from ptst.backends.local.schedule import build_scheduler
from pydantic import Field

from ptst.errors import BackendError, require
from ptst.types import Frozen, Hyperparameters

CPU_TOKENS_PER_FORWARD = 128


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
    metadata: dict[str, Any] = Field(default_factory=dict)



def micro_loss(model, kw, targets):  # type: ignore[no-untyped-def]
    """Summed cross-entropy over the supervised tokens of one micro-batch (float32 logits), and their count."""
    torch = import_torch()
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
    try:
        return _train_steps(model, settings, examples, outdir, on_step=on_step, resume=resume, device=device,
                            world=world, rank=rank, local_rank=local_rank)
    finally:
        if resident:
            detach_adapter(model)


def _train_steps(  # type: ignore[no-untyped-def]
    model,
    settings: TrainSettings,
    examples: Sequence[tuple[list[int], list[int]]],
    outdir: Path,
    *,
    on_step: Callable[[dict[str, Any]], None] | None,
    resume: bool,
    device: str,
    world: int,
    rank: int,
    local_rank: int,
) -> dict[str, Any]:
    """The optimisation loop of `train_lora` on a model that already carries fresh LoRA adapters."""
    torch = import_torch()
    hp = settings.hyperparameters
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

    if hp.chunk_size:
        examples = pack_chunks(examples, hp.chunk_size)
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
    scheduler = build_scheduler(optimizer, hp, total_steps, math.ceil(len(plans[0]) / hp.gradient_accumulation_steps))
    # chunks are full rows in which examples attend to each other (llama-recipes packing): the padded layout
    grouping = "padded" if settings.batching == "length_grouped" or hp.chunk_size else settings.batching
    # On CPU a forward's float32 activations cost ~2 MB per token for a 135M model (more for larger ones): unless the
    # spec says otherwise, forwards hold at most CPU_TOKENS_PER_FORWARD tokens, which keeps a small real model's run
    # under 2 GiB. Like the device itself, this changes the dropout masks' random stream, not the experiment.
    budget = settings.max_tokens_per_forward or (CPU_TOKENS_PER_FORWARD if device == "cpu" else None)
    save_steps = set(hp.save_steps)
    fingerprint = settings_fingerprint(settings, world)
    progress: dict[str, Any] = {"losses": [], "tokens": 0, "checkpoints": {}}
    start = 0
    resume_from = find_resume_checkpoint(outdir, fingerprint, world) if resume else None
    if resume_from is not None:
        saved = restore(resume_from, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank, device=device)
        start, progress = saved["step"], saved["progress"]
        if rank == 0:
            from ptst.backends.api import log

            log(f"  resuming {Path(settings.model).name} training from {resume_from} (step {start}/{total_steps})")
    losses: list[float] = list(progress["losses"])
    n_tokens_total = int(progress["tokens"])
    checkpoints: dict[str, str] = dict(progress["checkpoints"])
    log_path = outdir / TRAIN_LOG
    if rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        kept = read_train_log(log_path)[:start] if start else []
        log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    t0 = time.perf_counter()

    from ptst.backends.api import progress_bar

    with contextlib.ExitStack() as stack:
        advance: Callable[..., None] = _no_progress
        if rank == 0:
            title = f"train {Path(settings.model).name} (LoRA r={hp.lora.r})"
            advance = stack.enter_context(progress_bar(title, total_steps))
            advance(start)
        for step, window in enumerate(windows[start:], start=start + 1):
            t_step = time.perf_counter()
            # this rank's share of each micro-batch
            shares = [mb[rank::world] for mb in window]
            if world == 1 and budget:  # bounded activation memory, same gradient
                shares = [sub for sh in shares for sub in split_by_tokens(sh, lengths, budget)]
            n_sup = sum(sum(1 for t in examples[j][1][1:] if t != IGNORE_INDEX) for mb in window for j in mb)
            n_sup = max(n_sup, 1)  # a window of chunks holding only prompt tokens: zero loss, not a division by zero
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
                ck = outdir / f"{CHECKPOINT_PREFIX}{step}"
                save_rng_state(ck, rank, device)
                if world > 1:
                    torch.distributed.barrier()  # every rank's RNG state is on disk before rank 0 marks it complete
                if rank == 0:
                    checkpoints[str(step)] = str(ck)
                    done = {"losses": losses, "tokens": n_tokens_total, "checkpoints": checkpoints}
                    save_trainer_state(
                        ck, fingerprint=fingerprint, step=step, optimizer=optimizer, scheduler=scheduler, progress=done
                    )
                    save_adapter(model, ck, settings, {"step": step, "loss": loss}, {})
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
        save_adapter(model, outdir / ADAPTER_DIR, settings, summary, checkpoints)
    return summary


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    """Ranks other than 0 show no progress bar."""

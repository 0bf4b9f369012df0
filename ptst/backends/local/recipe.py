"""The LoRA optimisation loop as a recipe (after torchtune's recipes): `setup` builds the optimizer, the seeded batch
plan and the schedule and restores a checkpoint; `step` runs one accumulation window; `checkpoint` saves a resumable
state; `finish` saves the adapter. Each is short and says what it does; `run` strings them together.

One process, or one rank of a torchrun DDP group: every rank walks the same seeded plan and takes its share of each
micro-batch; the loss is summed and divided by the supervised tokens of the whole window on all ranks, so the update
equals the single-process one.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptst.backends.local.adapters import ADAPTER_DIR, TRAIN_LOG, read_train_log, save_adapter
from ptst.backends.local.data import collate, pack_chunks, plan_batches, split_by_tokens
from ptst.backends.local.models import import_torch, is_oom
from ptst.backends.local.packed_attention import packed_attention
from ptst.backends.local.render import IGNORE_INDEX
from ptst.backends.local.resume import (
    CHECKPOINT_PREFIX,
    find_resume_checkpoint,
    restore,
    save_rng_state,
    save_trainer_state,
    settings_fingerprint,
)
from ptst.backends.local.schedule import build_scheduler
from ptst.errors import BackendError

if TYPE_CHECKING:
    from ptst.backends.local.train import TrainSettings

# On CPU a forward's float32 activations cost ~2 MB per token for a 135M model (more for larger ones): unless the
# spec says otherwise, forwards hold at most CPU_TOKENS_PER_FORWARD tokens, which keeps a small real model's run
# under 2 GiB. With a bfloat16 base, activations take about 0.7 MB per token and forwards hold up to
# CPU_TOKENS_PER_FORWARD_BF16: several examples a forward, whose larger products ran 9-12% faster (SmolLM2, 2 threads:
# 286 tokens/s at 128, 312 at 512, 321 at 1024). Like the device itself, this changes the dropout masks' random
# stream and the float rounding, not the experiment.
CPU_TOKENS_PER_FORWARD = 128
CPU_TOKENS_PER_FORWARD_BF16 = 512

Examples = Sequence[tuple[list[int], list[int]]]


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


@dataclass
class Rank:
    """Where this process runs: its device and its place in a DDP group (world 1: a single process)."""

    device: str
    world: int = 1
    rank: int = 0
    local_rank: int = 0


@dataclass
class LoraRecipe:
    """One training run of a model that already carries fresh LoRA adapters (see `train.build_lora_model`)."""

    model: Any
    settings: TrainSettings
    examples: Examples
    outdir: Path
    where: Rank
    on_step: Callable[[dict[str, Any]], None] | None = None
    resume: bool = True
    extra_summary: dict[str, Any] = field(default_factory=dict)  # recorded beside the training figures (dtype, threads)
    # built by setup()
    ddp_model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    windows: list[list[list[int]]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    grouping: str = "packed"
    budget: int | None = None
    fingerprint: str = ""
    start: int = 0
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    checkpoints: dict[str, str] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return len(self.windows)

    # --- setup ------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_model_and_optimizer()
        self._setup_plan()
        self._restore_checkpoint()
        self._start_log()

    def _setup_model_and_optimizer(self) -> None:
        torch = import_torch()
        hp, w = self.settings.hyperparameters, self.where
        self.model.train()
        self.ddp_model = self.model
        if w.world > 1:
            ids = [w.local_rank] if w.device.startswith("cuda") else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_kw: dict[str, Any] = {"lr": hp.learning_rate, "weight_decay": hp.weight_decay}
        if w.device.startswith("cuda"):
            opt_kw["fused"] = True
        self.optimizer = torch.optim.AdamW(params, **opt_kw)

    def _setup_plan(self) -> None:
        """The seeded batch plan of every epoch cut into accumulation windows, and the schedule over them."""
        s, hp = self.settings, self.settings.hyperparameters
        if hp.chunk_size:
            self.examples = pack_chunks(self.examples, hp.chunk_size)
        self.lengths = [len(x) for x, _ in self.examples]
        plans = [plan_batches(self.lengths, hp.batch_size, s.seed, e, s.batching) for e in range(hp.epochs)]
        acc = hp.gradient_accumulation_steps
        self.windows = [plan[i : i + acc] for plan in plans for i in range(0, len(plan), acc)]
        if s.max_steps is not None:
            self.windows = self.windows[: s.max_steps]
        self.scheduler = build_scheduler(self.optimizer, hp, self.total_steps, math.ceil(len(plans[0]) / acc))
        # chunks are full rows in which examples attend to each other (llama-recipes packing): the padded layout
        self.grouping = "padded" if s.batching == "length_grouped" or hp.chunk_size else s.batching
        self.budget = s.max_tokens_per_forward or self._cpu_budget()
        self.fingerprint = settings_fingerprint(s, self.where.world)

    def _cpu_budget(self) -> int | None:
        if self.where.device != "cpu":
            return None
        half = next(self.model.parameters()).element_size() == 2  # the base's weights (LoRA's stay float32)
        return CPU_TOKENS_PER_FORWARD_BF16 if half else CPU_TOKENS_PER_FORWARD

    def _restore_checkpoint(self) -> None:
        """Continue from the latest complete checkpoint of this very job, when there is one (see resume.py)."""
        w = self.where
        found = find_resume_checkpoint(self.outdir, self.fingerprint, w.world) if self.resume else None
        if found is None:
            return
        saved = restore(found, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, rank=w.rank,
                        device=w.device)
        self.start, progress = saved["step"], saved["progress"]
        self.losses = list(progress["losses"])
        self.tokens = int(progress["tokens"])
        self.checkpoints = dict(progress["checkpoints"])
        if w.rank == 0:
            from ptst.backends.api import log

            log(f"  resuming {Path(self.settings.model).name} training from {found} "
                f"(step {self.start}/{self.total_steps})")

    def _start_log(self) -> None:
        """`train_log.jsonl` holds one record per step done: a resumed run keeps the steps before its checkpoint."""
        if self.where.rank != 0:
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        kept = read_train_log(self.log_path)[: self.start] if self.start else []
        self.log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    @property
    def log_path(self) -> Path:
        return self.outdir / TRAIN_LOG

    # --- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.setup()
        t0 = time.perf_counter()
        from ptst.backends.api import progress_bar

        with contextlib.ExitStack() as stack:
            advance: Callable[..., None] = _no_progress
            if self.grouping == "packed" and self.where.device == "cpu":
                stack.enter_context(packed_attention(self.model))
            if self.where.rank == 0:
                title = f"train {Path(self.settings.model).name} (LoRA r={self.settings.hyperparameters.lora.r})"
                advance = stack.enter_context(progress_bar(title, self.total_steps))
                advance(self.start)
            for step, window in enumerate(self.windows[self.start :], start=self.start + 1):
                rec = self.step(step, window)
                if self.where.rank == 0:
                    advance(1, info=f"loss {rec['loss']:.4f}  {rec['tokens_per_s'] or 0:,.0f} tok/s")
                if step in self.settings.hyperparameters.save_steps and step != self.total_steps:
                    self.checkpoint(step, self.losses[-1])
                if self.on_step is not None:
                    self.on_step(rec)
        return self.finish(time.perf_counter() - t0)

    def step(self, step: int, window: list[list[int]]) -> dict[str, Any]:
        """One optimizer step over an accumulation window; its record is appended to the log and returned."""
        t_step = time.perf_counter()
        n_sup = self._supervised(window)
        step_loss, step_tokens = self._accumulate(window, n_sup)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        step_loss, step_tokens = self._all_reduce(step_loss, step_tokens)
        loss = float(step_loss) / n_sup
        self.losses.append(loss)
        self.tokens += step_tokens
        dt = time.perf_counter() - t_step
        rec = {"step": step, "loss": round(loss, 6), "lr": lr, "tokens": step_tokens, "seconds": round(dt, 6),
               "tokens_per_s": round(step_tokens / dt, 1) if dt > 0 else None}
        if self.where.rank == 0:
            with self.log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    def _supervised(self, window: list[list[int]]) -> int:
        """Supervised tokens of the whole window (all ranks): the loss is divided by it. At least 1: a window of
        chunks holding only prompt tokens has zero loss, not a division by zero."""
        ex = self.examples
        return max(1, sum(sum(1 for t in ex[j][1][1:] if t != IGNORE_INDEX) for mb in window for j in mb))

    def _shares(self, window: list[list[int]]) -> list[list[int]]:
        """This rank's share of each micro-batch, split into forwards within the token budget (one process)."""
        w = self.where
        shares = [mb[w.rank :: w.world] for mb in window]
        if w.world == 1 and self.budget:  # bounded activation memory, same gradient
            shares = [sub for sh in shares for sub in split_by_tokens(sh, self.lengths, self.budget)]
        return shares

    def _accumulate(self, window: list[list[int]], n_sup: int) -> tuple[Any, int]:
        """Forward and backward over this rank's shares; the loss summed on the device (one sync per step)."""
        torch = import_torch()
        w = self.where
        shares = self._shares(window)
        step_loss = torch.zeros((), dtype=torch.float64, device=w.device)
        step_tokens = 0
        for k, share in enumerate(shares):
            weight = 1.0
            if not share:
                if w.world == 1:
                    continue
                # a rank without examples in this micro-batch still joins DDP's gradient exchange
                share, weight = window[k][:1], 0.0
            loss_sum, ntok = self._forward_backward(share, weight, n_sup, sync=w.world == 1 or k == len(shares) - 1)
            step_loss += weight * loss_sum.detach().double()
            step_tokens += int(weight) * ntok
        return step_loss, step_tokens

    def _forward_backward(self, share: list[int], weight: float, n_sup: int, *, sync: bool) -> tuple[Any, int]:
        w, hp = self.where, self.settings.hyperparameters
        batch = [self.examples[j] for j in share]
        kw, targets, ntok = collate(batch, self.grouping, self.settings.pad_id, w.device)
        ctx = self.ddp_model.no_sync() if (w.world > 1 and not sync) else contextlib.nullcontext()
        try:
            with ctx:
                loss_sum, _ = micro_loss(self.ddp_model, kw, targets)
                # DDP averages gradients over ranks; scale so the result is sum / window tokens.
                (loss_sum * (weight * w.world / n_sup)).backward()
        except Exception as e:
            if is_oom(e):
                raise BackendError(
                    f"out of GPU memory training {self.settings.model} at batch_size {hp.batch_size} "
                    f"(longest example {max(len(x) for x, _ in batch)} tokens): lower batch_size and raise "
                    "gradient_accumulation_steps, set gradient_checkpointing: true, or lower max_seq_len"
                ) from e
            raise
        return loss_sum, ntok

    def _all_reduce(self, step_loss: Any, step_tokens: int) -> tuple[Any, int]:
        if self.where.world == 1:
            return step_loss, step_tokens
        torch = import_torch()
        t = torch.stack([step_loss, torch.tensor(float(step_tokens), dtype=torch.float64, device=self.where.device)])
        torch.distributed.all_reduce(t)
        return t[0], int(t[1])

    # --- checkpoints and the end ------------------------------------------------------------------------------------
    def checkpoint(self, step: int, loss: float) -> None:
        """A resumable state at `step`: every rank's RNG state, then (rank 0) optimizer, scheduler and progress,
        then the adapter with its metadata file last (which marks the checkpoint complete)."""
        w = self.where
        ck = self.outdir / f"{CHECKPOINT_PREFIX}{step}"
        save_rng_state(ck, w.rank, w.device)
        if w.world > 1:
            import_torch().distributed.barrier()  # every rank's RNG state is on disk before rank 0 marks it complete
        if w.rank != 0:
            return
        self.checkpoints[str(step)] = str(ck)
        done = {"losses": self.losses, "tokens": self.tokens, "checkpoints": self.checkpoints}
        save_trainer_state(ck, fingerprint=self.fingerprint, step=step, optimizer=self.optimizer,
                           scheduler=self.scheduler, progress=done)
        save_adapter(self.model, ck, self.settings, {"step": step, "loss": loss}, {})

    def finish(self, seconds: float) -> dict[str, Any]:
        """The training summary; rank 0 saves the final adapter with it."""
        losses, total = self.losses, self.total_steps
        summary = {
            "steps": total,
            "final_loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None,
            "tokens": self.tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(self.tokens / seconds, 1) if seconds > 0 else None,
            "world_size": self.where.world,
            **self.extra_summary,
        }
        if self.where.rank == 0:
            if total in self.settings.hyperparameters.save_steps:
                self.checkpoints[str(total)] = str(self.outdir / ADAPTER_DIR)
            save_adapter(self.model, self.outdir / ADAPTER_DIR, self.settings, summary, self.checkpoints)
        return summary


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    """Ranks other than 0 show no progress bar."""

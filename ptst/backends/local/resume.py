"""Resuming an interrupted training job from its last `save_steps` checkpoint instead of starting over.

Each checkpoint directory holds, beside the adapter, the trainer state (optimizer, scheduler, losses so far) and
every rank's RNG state. The batch plan is a pure function of (seed, epoch), so restoring these at step k and
skipping the first k accumulation windows continues exactly where the interrupted run was: the remaining steps see
the same batches, dropout masks and learning rates, and the final adapter equals an uninterrupted run's.

A checkpoint is used only when its settings fingerprint (everything in `TrainSettings` plus the world size) matches
the job being run; anything else (other hyperparameters, another device, another number of GPUs) starts over.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptst.backends.local.adapters import read_adapter_metadata
from ptst.backends.local.models import import_torch
from ptst.keys import content_hash

if TYPE_CHECKING:
    from ptst.backends.local.train import TrainSettings

STATE_FILE = "trainer_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"


def rng_file(rank: int) -> str:
    return f"rng_state_{rank}.pt"


def settings_fingerprint(settings: TrainSettings, world: int) -> str:
    # `threads` changes speed only: a job resumes whatever thread count the next attempt picks
    return content_hash({"settings": settings.model_dump(mode="json", exclude={"threads"}), "world_size": world})


def checkpoint_dirs(outdir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint adapter under `outdir`, oldest first."""
    out = []
    for d in Path(outdir).glob(CHECKPOINT_PREFIX + "*"):
        m = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", d.name)
        if m and d.is_dir() and read_adapter_metadata(d) is not None:
            out.append((int(m.group(1)), d))
    return sorted(out)


def save_rng_state(directory: Path, rank: int, device: str) -> None:
    """This rank's random state (dropout masks are drawn from it); every rank writes its own file."""
    torch = import_torch()
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    torch.save(state, directory / rng_file(rank))


def save_trainer_state(directory: Path, *, fingerprint: str, step: int, optimizer, scheduler, progress: dict) -> None:  # type: ignore[no-untyped-def]
    """Optimizer and scheduler state plus the run's progress (losses, tokens, earlier checkpoints); rank 0 only,
    written before the adapter's metadata file, so a complete checkpoint always has it."""
    torch = import_torch()
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
    }
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)


# What torch.load raises on a truncated or damaged file: a broken zip archive (RuntimeError), a broken pickle
# stream, an early end of file, or an unreadable file.
UNREADABLE = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError)


def _load_or_warn(torch: Any, path: Path) -> Any:
    """A checkpoint file's contents, or None after a warning naming the file (a kill or a full disk mid-write damages
    the newest checkpoint; the one before it still resumes the job)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        from ptst.backends.api import log

        text = str(e).strip().splitlines()
        log(f"warning: checkpoint file {path} is damaged ({type(e).__name__}: {text[0] if text else 'unreadable'}); "
            "resuming from the checkpoint before it")
        return None


def find_resume_checkpoint(outdir: Path, fingerprint: str, world: int) -> Path | None:
    """The latest complete, readable checkpoint of this very job (same fingerprint, every rank's RNG state present
    and loadable). A damaged one is skipped with a warning naming its file, never silently."""
    torch = import_torch()
    for _, d in reversed(checkpoint_dirs(outdir)):
        state_path = d / STATE_FILE
        if not state_path.is_file() or not all((d / rng_file(r)).is_file() for r in range(world)):
            continue
        state = _load_or_warn(torch, state_path)
        if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
            continue
        if all(_load_or_warn(torch, d / rng_file(r)) is not None for r in range(world)):
            return d
    return None


def restore(directory: Path, *, model, optimizer, scheduler, rank: int, device: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Load a checkpoint's adapter weights, optimizer, scheduler and this rank's RNG state into a freshly built run.
    Returns the saved step and progress."""
    torch = import_torch()
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(directory / "adapter_model.safetensors"), device=device)
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise RuntimeError(f"checkpoint {directory} does not fit the model: unexpected keys {unexpected[:3]}")
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = torch.load(directory / rng_file(rank), map_location="cpu", weights_only=True)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.startswith("cuda"):
        torch.cuda.set_rng_state(rng["cuda"], torch.device(device))
    return {"step": int(state["step"]), "progress": dict(state["progress"])}

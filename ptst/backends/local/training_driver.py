"""The training driver of the local backends: a `TrainJob` becomes a saved LoRA adapter and its `ModelRef`.

It encodes and audits the job's examples with the backend's tokenizer, frees the GPU the generation engines hold,
trains in this process or under torchrun (`train.py`, `distributed.py`), and reads back what was saved: a job whose
adapter is complete (same job key) is never trained twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptst.backends.base import JobLedger, ModelRef, TrainJob
from ptst.backends.local.adapters import ADAPTER_DIR, TRAIN_LOG, read_adapter_metadata, read_train_log
from ptst.backends.local.data import prepare_examples
from ptst.backends.local.distributed import launch_distributed
from ptst.backends.local.generate import release_generators
from ptst.backends.local.resume import checkpoint_dirs
from ptst.backends.local.train import TrainSettings, train_lora
from ptst.backends.local.vllm import release_vllm
from ptst.errors import BackendError

if TYPE_CHECKING:
    from ptst.backends.local.backend import LocalBackend


def fine_tune(backend: LocalBackend, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
    """Train `job` into `workdir/adapter` (or find it there already trained) and return the fine-tuned model."""
    workdir = Path(workdir)
    done = read_adapter_metadata(workdir / ADAPTER_DIR)
    if done is not None and done.get("job_key") == job.key:
        return model_ref(backend, job, workdir, done)
    encoded = [backend.encode_example(c) for c in job.examples]
    examples, audit = prepare_examples(encoded, job.hyperparameters.max_seq_len)
    from ptst.backends.api import log

    log(f"  training data ({backend.kind}, {job.train_template}): {audit.describe()}")
    name = f"{backend.kind}:{job.key}"
    ledger.put(name, {"status": "running", "workdir": str(workdir)})
    release_generators()  # training needs the GPU memory the generation engines hold
    release_vllm()
    settings = train_settings(backend, job, audit.as_dict())
    if backend.options.nproc_per_node > 1:
        launch_distributed(settings, examples, workdir, backend.options.nproc_per_node)
    else:
        train_lora(settings, examples, workdir)
    meta = read_adapter_metadata(workdir / ADAPTER_DIR)
    if meta is None:
        raise BackendError(f"training finished but left no adapter in {workdir / ADAPTER_DIR}; see the log above")
    ledger.put(name, {"status": "succeeded", "workdir": str(workdir)})
    return model_ref(backend, job, workdir, meta)


def train_settings(backend: LocalBackend, job: TrainJob, audit: dict[str, Any]) -> TrainSettings:
    """The job and the backend's options as the training loop takes them; the metadata is written beside the
    adapter (the key, the data's audit, the options that make the result)."""
    o = backend.options
    return TrainSettings(
        model=backend.spec.model,
        seed=job.seed,
        hyperparameters=job.hyperparameters,
        dtype=o.dtype,
        device=o.device,
        attn_implementation=o.attn_implementation,
        batching=o.batching,
        fast_lora_dropout=o.fast_lora_dropout,
        max_tokens_per_forward=o.max_tokens_per_forward,
        threads=o.threads,
        pad_id=backend.pad_id,
        metadata={
            "job_key": job.key,
            "backend": backend.kind,
            "base_model": backend.spec.model,
            "train_template": job.train_template,
            "seed": job.seed,
            "data_hash": job.data_hash,
            "n_examples": len(job.examples),
            "audit": audit,
            "options": backend.identity(),
        },
    )


def model_ref(backend: LocalBackend, job: TrainJob, workdir: Path, meta: dict[str, Any]) -> ModelRef:
    return ModelRef(
        backend=backend.spec.name,
        base_model=backend.spec.model,
        model_id=f"{backend.spec.model}+lora-{job.key[:12]}",
        adapter_dir=str(workdir / ADAPTER_DIR),
        train_template=job.train_template,
        seed=job.seed,
        meta={"checkpoints": meta.get("checkpoints", {}), "final_loss": meta.get("train", {}).get("final_loss"),
              "loss": logged_loss(workdir, meta)},
    )


def checkpoints(model: ModelRef) -> list[ModelRef]:
    """The complete adapters saved at `save_steps` beside `model`'s final adapter, oldest first."""
    if model.adapter_dir is None:
        return []
    final = read_adapter_metadata(Path(model.adapter_dir)) or {}
    found = [(step, d, read_adapter_metadata(d) or {}) for step, d in checkpoint_dirs(Path(model.adapter_dir).parent)]
    # a save step at the very end is the final adapter itself
    found += [
        (int(k), Path(v), final) for k, v in final.get("checkpoints", {}).items() if Path(v) == Path(model.adapter_dir)
    ]
    out = []
    for step, d, meta in sorted(found, key=lambda x: x[0]):
        train = meta.get("train", {})
        out.append(model.model_copy(update={
            "model_id": f"{model.model_id}@step-{step}",
            "adapter_dir": str(d),
            "meta": {"step": step, "loss": train.get("loss", train.get("final_loss"))},
        }))
    return out


def logged_loss(workdir: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The job's loss summary (see ptst.training_loss) from its own `train_log.jsonl`, one record per step."""
    from ptst.training_loss import loss_summary

    log = read_train_log(workdir / TRAIN_LOG)
    return loss_summary(((r["step"], r["loss"]) for r in log if "step" in r and "loss" in r),
                        steps=meta.get("train", {}).get("steps"))

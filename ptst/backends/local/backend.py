"""`LocalBackend`: the shared local engine of the Llama 2 and Mistral backends (and the generic `kind: hf` one).

The local backends differ only in how a `Conversation` becomes token ids (`llama2.py`: Meta's SentencePiece formula;
`mistral.py`: mistral-common). Everything else is here and in the sibling modules, so all train and generate the
same way: rendering contract (`render.py`), data and packing (`data.py`), the LoRA loop (`train.py`), adapters on
disk (`adapters.py`), generation (`generate.py`, `vllm.py`), several GPUs (`distributed.py`).

torch, transformers and peft are imported inside functions only: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from ptst.backends.base import (
    Estimate,
    FineTuneBackend,
    GenerationConfig,
    JobLedger,
    ModelRef,
    OnResponse,
    Rendered,
    TrainJob,
)
from ptst.backends.local.adapters import ADAPTER_DIR, METADATA_FILE, TRAIN_LOG, read_adapter_metadata, read_train_log
from ptst.backends.local.data import prepare_examples
from ptst.backends.local.distributed import launch_distributed
from ptst.backends.local.generate import Generator, release_generators
from ptst.backends.local.gguf import gguf_identity, gguf_problem, is_gguf
from ptst.backends.local.merge import merged_identity
from ptst.backends.local.models import (
    download_model,
    hub_id_problem,
    local_model_dir,
    model_dir_problem,
    not_cached_problem,
    uncached_hub_id,
)
from ptst.backends.local.render import TrainingFormError, check_prompt_ids, clean_answer, supervised_labels, where
from ptst.backends.local.resume import checkpoint_dirs
from ptst.backends.local.train import TrainSettings, train_lora
from ptst.backends.local.vllm import generate_vllm, release_vllm
from pydantic import Field

from ptst.conversation import Conversation
from ptst.downloads import downloads_allowed
from ptst.errors import BackendError, PtstError, UsageError
from ptst.types import ComputeHours, Frozen

ESTIMATE_SAMPLE = 500  # examples rendered by `estimate` at most (see there)


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


class LocalBackend(FineTuneBackend):
    """A local model trained with LoRA and served by transformers (or vLLM).

    Subclasses provide the tokenizer side: `prompt_text`, `prompt_ids`, `training_text`, `training_ids`, `decode`,
    `bos_id`, `eos_id`, `tokenizer_fingerprint`.
    """

    modes: ClassVar[frozenset[str]] = frozenset({"chat", "text"})
    Options = LocalOptions
    options: LocalOptions
    # The runner saves once per chunk: one generation batch (the largest automatic one), so a kill loses at most a
    # batch while batches stay as big as the GPU allows. Set per instance from `max_generation_batch`.
    generation_chunk: ClassVar[int] = 256

    def __init__(self, spec):  # type: ignore[no-untyped-def]
        super().__init__(spec)
        self._generator: Generator | None = None
        self._fetched = not self.options.download  # nothing to fetch unless `download: true`
        self.generation_chunk = self.options.max_generation_batch  # type: ignore[misc]

    # --- tokenizer side (subclasses) ---------------------------------------------------------------------------
    bos_id: int
    eos_id: int

    def plain_text(self, conv: Conversation) -> str | None:
        return self.training_text(conv, conv.answer) if conv.answer is not None else self.prompt_text(conv)

    def prompt_text(self, conv: Conversation) -> str:
        raise NotImplementedError

    def approx_text(self, conv: Conversation) -> str:
        """The text to count tokens on when the tokenizer is not on this machine (an estimate before `download:
        true` fetches it): the rendered text where rendering needs no tokenizer (Llama 2, Mistral)."""
        return self.plain_text(conv) or ""

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

    def stop_token_ids(self) -> tuple[int, ...]:
        """Token ids that end a generated answer (it is cut before the first). Llama 2 and Mistral end a turn with
        EOS; a chat-template backend adds its template's end-of-turn ids (`<|im_end|>`, `<|eot_id|>`)."""
        return (self.eos_id,)

    def awaiting_download(self) -> bool:
        """`download: true`, the model not fetched yet, and this command downloads nothing (`ptst estimate`)."""
        return not self._fetched and not downloads_allowed() and uncached_hub_id(self.spec.model)

    def fetch_model(self) -> None:
        """With `download: true`: bring a hub id that is not in the local Hugging Face cache into it, once, before the
        tokenizer or weights are first looked up there. Subclasses call it where they resolve their tokenizer (the
        first thing a run, an estimate or `ptst render` needs); `preflight` never does: validating downloads nothing,
        and neither does a command under `no_downloads()` (`ptst estimate`), which works without the model."""
        if not self._fetched and downloads_allowed():
            download_model(self.spec.model)
            self._fetched = True

    def check_tokenizer(self) -> None:
        """Load the tokenizer, refusing one this backend cannot render (a user error naming the model): subclasses
        check the family where they load it, so any use of the tokenizer (here: its BOS id) refuses."""
        self.bos_id  # noqa: B018 - loading is the check

    # --- scheduling, validation, checkpoints --------------------------------------------------------------------
    def resource(self) -> str:
        """The device this backend's jobs run on: the scheduler runs one job at a time per device. `cuda` (all GPUs)
        for a multi-GPU job; `cuda:0` for the default single GPU."""
        device = self.options.device
        if device is None:
            try:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            except ImportError:
                device = "cpu"
        if device == "cuda" and self.options.nproc_per_node == 1:
            return "cuda:0"
        return device

    def base_model(self) -> ModelRef:
        """The model as given, or with `adapter:` the fine-tuned model that adapter makes of it (its training
        template and seed read from the adapter's metadata, so reports place it where a trained model goes)."""
        if self.options.adapter is None:
            ref = super().base_model()
            if is_gguf(self.spec.model):
                ref = ref.model_copy(update={"meta": {**ref.meta, **gguf_identity(self.spec.model)}})
            return ref
        meta = self._adapter_metadata()
        adapter = Path(self.options.adapter)
        return ModelRef(
            backend=self.spec.name, base_model=self.spec.model, model_id=f"{self.spec.model}+{adapter}",
            adapter_dir=str(adapter), train_template=meta.get("train_template"), seed=meta.get("seed"),
            meta={"adapter": str(adapter), "job_key": meta.get("job_key"),
                  "final_loss": meta.get("train", {}).get("final_loss")},
        )

    def _adapter_metadata(self) -> dict[str, Any]:
        """The adapter's metadata; a user error (one line, what to do) for a folder that is not a complete ptst
        adapter or one trained on another base model."""
        problem = self._adapter_problem()
        if problem is not None:
            raise UsageError(problem)
        return read_adapter_metadata(Path(self.options.adapter or "")) or {}

    def _adapter_problem(self) -> str | None:
        if self.options.adapter is None:
            return None
        adapter = Path(self.options.adapter)
        meta = read_adapter_metadata(adapter)
        if meta is None:
            return (f"adapter {adapter}: not a complete ptst LoRA adapter (needs adapter_model.safetensors and "
                    f"{METADATA_FILE}); give the `adapter` folder of a finished run's models/KEY/")
        trained_on = str(meta.get("base_model", ""))
        if not _same_model(trained_on, self.spec.model):
            return (f"adapter {adapter}: trained on {trained_on or 'an unrecorded model'}, but this backend's model is "
                    f"{self.spec.model}; set `model: {trained_on}`")
        return None

    def preflight(self) -> list[str]:
        """The model must be an HF-format folder (here or in the local HF cache) and its tokenizer of this backend's
        family; an `adapter` must be a complete ptst adapter of that model. Reads files only: no weights are loaded,
        nothing touches the network."""
        adapter_problem = self._adapter_problem()
        adapter = [adapter_problem] if adapter_problem is not None else []
        if is_gguf(self.spec.model):  # its header says whether transformers can read it: no conversion here
            problem = gguf_problem(self.spec.model)
            if problem is not None:
                return [*adapter, problem]
            problems = list(adapter)
            try:
                self.check_tokenizer()
            except PtstError as e:
                problems.append(str(e))
            return problems
        try:
            local_model_dir(self.spec.model)
        except BackendError:
            # Not here. A missing folder: `ptst validate` says so itself. A hub id not in the cache: certain to fail
            # unless this backend downloads it (then `ptst validate` lists it as unchecked).
            if uncached_hub_id(self.spec.model):
                invalid = hub_id_problem(self.spec.model)
                if invalid is not None:  # knowable offline: no download could ever find it
                    return [*adapter, invalid]
                if not self.options.download:
                    return [*adapter, not_cached_problem(self.kind, self.spec.model)]
            if self.options.tokenizer is None:
                return adapter  # only a separately given tokenizer can still be checked
            problems = list(adapter)
        else:
            problem = model_dir_problem(self.spec.model)
            problems = adapter + ([problem] if problem is not None else [])
        fetched, self._fetched = self._fetched, True  # validating downloads nothing
        try:
            self.check_tokenizer()
        except PtstError as e:
            problems.append(str(e))
        finally:
            self._fetched = fetched
        return problems

    def checkpoints(self, model: ModelRef) -> list[ModelRef]:
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
            out.append(
                model.model_copy(
                    update={
                        "model_id": f"{model.model_id}@step-{step}",
                        "adapter_dir": str(d),
                        "meta": {"step": step, "loss": meta.get("train", {}).get("loss", meta.get("train", {}).get("final_loss"))},
                    }
                )
            )
        return out

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
        the transformers engine are not: they change speed and float rounding, not the experiment. vLLM is: its
        outputs differ beyond rounding (own kernels and sampler), so its generations are keyed apart."""
        o = self.options
        # A hub id not downloaded yet has no tokenizer to hash: only a command that downloads nothing (`ptst
        # estimate`, whose keys are never stored) may use a placeholder; a run needs the real tokenizer first
        # (tokenizer_fingerprint raises a user error without it).
        absent = not downloads_allowed() and (self._tokenizer_absent() or self.awaiting_download())
        fingerprint = f"absent:{self.spec.model}" if absent else self.tokenizer_fingerprint()
        ident: dict[str, Any] = {
            "tokenizer_sha256": fingerprint,
            "dtype": o.dtype,
            "batching": o.batching,
            "fast_lora_dropout": o.fast_lora_dropout,
        }
        if o.max_tokens_per_forward is not None:  # other forwards draw other dropout masks
            ident["max_tokens_per_forward"] = o.max_tokens_per_forward
        if o.engine != "hf":  # vLLM's kernels and sampler give other outputs: its generations are other results
            ident["engine"] = o.engine
        if o.adapter is not None:  # the adapter's weights are the model: another adapter, other results
            ident["adapter_sha256"] = _file_sha256(Path(o.adapter) / "adapter_model.safetensors")
        if is_gguf(self.spec.model):  # the file's bytes and quantization are the model
            ident.update(gguf_identity(self.spec.model))
        merged = merged_identity(self.spec.model)
        if merged is not None:  # a merged folder is as new as the adapter merged into it (see merge.py)
            ident.update(merged)
        return ident

    def estimate(self, job: TrainJob) -> Estimate:
        """Training tokens, from every example when there are few, else from an evenly spaced sample scaled up: exact
        rendering costs ~2 ms (Llama 2) to ~18 ms (mistral-common) an example, so a 7,473-example grid would take
        minutes to estimate. Local training costs no money; the count only feeds the GPU-hours figure. Where the
        tokenizer is not on this machine (a hub id not downloaded yet), tokens are counted from the plain text with
        tiktoken and scaled by the measured SentencePiece/cl100k ratio, and the note says so."""
        n = len(job.examples)
        step = max(1, -(-n // ESTIMATE_SAMPLE))  # ceil(n / sample)
        sample = job.examples[::step]
        if self._tokenizer_absent():
            from ptst.backends.local.throughput import approx_tokens

            counted, how_counted = approx_tokens([self.approx_text(c) for c in sample], self.family)
            tokens = round(counted * n / len(sample)) if sample else 0
            return Estimate(n_examples=n, n_tokens=tokens, n_billed_tokens=tokens * job.hyperparameters.epochs,
                            usd=0.0, notes=f"local LoRA training, no API cost; {how_counted}")
        encoded = [self.encode_example(c) for c in sample]
        _, audit = prepare_examples(encoded, job.hyperparameters.max_seq_len)
        tokens = round(audit.n_tokens * n / len(sample)) if sample else 0
        how = audit.describe() if step == 1 else f"tokens scaled from {len(sample):,} of {n:,} examples"
        return Estimate(
            n_examples=n,
            n_tokens=tokens,
            n_billed_tokens=tokens * job.hyperparameters.epochs,
            usd=0.0,
            notes=f"local LoRA training, no API cost; {how}",
        )

    def _tokenizer_absent(self) -> bool:
        """No tokenizer given and the model neither a folder nor in the local HF cache: nothing to count with (the
        same case `ptst validate` lists as unchecked rather than as an error)."""
        if self.options.tokenizer is not None:
            return False
        try:
            local_model_dir(self.spec.model)
        except BackendError:
            return True
        return False

    def generation_usd(self, prompts: Sequence[Conversation], response_tokens: float, *, fine_tuned: bool) -> float:
        return 0.0  # the user's own hardware: no API money; its time is in gpu_hours

    def gpu_hours(self, train_tokens: int, decode_tokens: float) -> float | None:
        h = self.compute_hours(train_tokens, decode_tokens)
        return h.hours if h.device == "gpu" else None

    def _where(self) -> tuple[str, str]:
        """(device, precision) the throughput rows are picked by: `device: cpu` is a CPU job (float32 there); on a
        GPU `dtype: float32` has its own rows, anything else is ptst's bf16 default."""
        o = self.options
        if (o.device or "").startswith("cpu"):
            return "cpu", "float32"
        return "gpu", "float32" if o.dtype == "float32" else "bfloat16"

    def compute_hours(self, train_tokens: int, decode_tokens: float) -> ComputeHours:
        from ptst.backends.local.throughput import compute_hours

        return compute_hours(train_tokens, decode_tokens, *self._where())

    def estimate_notes(self) -> list[str]:
        from ptst.backends.local.throughput import note

        return [note(*self._where())]

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
        release_generators()  # training needs the GPU memory the generation engines hold
        release_vllm()
        settings = TrainSettings(
            model=self.spec.model,
            seed=job.seed,
            hyperparameters=job.hyperparameters,
            dtype=self.options.dtype,
            device=self.options.device,
            attn_implementation=self.options.attn_implementation,
            batching=self.options.batching,
            fast_lora_dropout=self.options.fast_lora_dropout,
            max_tokens_per_forward=self.options.max_tokens_per_forward,
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
            meta={"checkpoints": meta.get("checkpoints", {}), "final_loss": meta.get("train", {}).get("final_loss"),
                  "loss": _logged_loss(workdir, meta)},
        )

    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
        out = [""] * len(prompts)

        def keep(done: Sequence[tuple[int, str]]) -> None:
            for i, r in done:
                out[i] = r

        self.generate_streaming(model, prompts, cfg, keep)
        return out

    def generation_ids(self, prompts: Sequence[Conversation]) -> list[list[int]]:
        """The token ids each prompt is generated from (checked: BOS first); a subclass may check otherwise."""
        ids = []
        for conv in prompts:
            if conv.answer is not None:
                conv = conv.without_answer()
            p = self.prompt_ids(conv)
            check_prompt_ids(p, self.bos_id, where(conv))
            ids.append(p)
        return ids

    def generate_streaming(
        self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig, on_response: OnResponse
    ) -> None:
        """Each decoded batch handed over as it finishes (a kill loses at most the batch on the device); vLLM
        schedules the whole call itself, so its responses come at the end of the call."""
        ids = self.generation_ids(prompts)
        stops = self.stop_token_ids()
        if self.options.engine == "vllm":
            self._close_generator()
            release_generators()  # one engine holds the GPU at a time
            out = generate_vllm(model, ids, cfg, self.options, eos_id=self.eos_id, stop_ids=stops)
            on_response([(i, self.decode(o)) for i, o in enumerate(out)])
            return
        gen = self._generator_for(model)
        gen.generate(ids, cfg, eos_id=self.eos_id, pad_id=self.pad_id, stop_ids=stops,
                     on_batch=lambda done: on_response([(i, self.decode(o)) for i, o in done]))

    def _close_generator(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None

    def _generator_for(self, model: ModelRef) -> Generator:
        """The runner calls `generate` repeatedly with chunks for one ModelRef: keep that model loaded."""
        key = (model.base_model, model.adapter_dir)
        if self._generator is None or self._generator.closed or self._generator.key != key:
            self._close_generator()
            release_generators()  # one engine holds the GPU at a time: another backend's model is freed
            release_vllm()
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



def _same_model(a: str, b: str) -> bool:
    """Two spellings of one base model: equal ids, or the same folder."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _file_sha256(path: Path) -> str | None:
    import hashlib

    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _logged_loss(workdir: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The job's loss summary (see ptst.training_loss) from its own `train_log.jsonl`, one record per step."""
    from ptst.training_loss import loss_summary

    log = read_train_log(workdir / TRAIN_LOG)
    return loss_summary(((r["step"], r["loss"]) for r in log if "step" in r and "loss" in r),
                        steps=meta.get("train", {}).get("steps"))

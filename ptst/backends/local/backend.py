"""`LocalBackend`: the shared local engine of the Llama 2 and Mistral backends (and the generic `kind: hf` one).

The local backends differ only in how a `Conversation` becomes token ids (`llama2.py`: Meta's SentencePiece formula;
`mistral.py`: mistral-common). Everything else is here and in the sibling modules, so all train and generate the
same way: where the model is (`resolver.py`), rendering contract (`render.py`), data and packing (`data.py`), the
training driver (`training_driver.py`) and its LoRA recipe (`train.py`, `recipe.py`), adapters on disk
(`adapters.py`), the generation driver (`generation_driver.py`: `generate.py`, `decode.py`, `vllm.py`), several GPUs
(`distributed.py`), the CPU's bf16 and free cores (`cpu.py`). This module keeps the options, identity, validation
and estimates.

torch, transformers and peft are imported inside functions only: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

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
from ptst.backends.local import training_driver
from ptst.backends.local.adapters import METADATA_FILE, read_adapter_metadata
from ptst.backends.local.data import prepare_examples
from ptst.backends.local.generation_driver import GenerationDriver
from ptst.backends.local.gguf import gguf_identity, gguf_problem, is_gguf
from ptst.backends.local.merge import merged_identity
from ptst.backends.local.options import LocalOptions
from ptst.backends.local.render import TrainingFormError, check_prompt_ids, clean_answer, supervised_labels, where
from ptst.backends.local.resolver import (
    download_model,
    hub_id_problem,
    local_model_dir,
    model_dir_problem,
    not_cached_problem,
    uncached_hub_id,
)
from ptst.conversation import Conversation
from ptst.digests import file_sha256
from ptst.downloads import downloads_allowed
from ptst.errors import BackendError, PtstError, UsageError
from ptst.types import ComputeHours

ESTIMATE_SAMPLE = 500  # examples rendered by `estimate` at most (see there)

__all__ = ["ESTIMATE_SAMPLE", "LocalBackend", "LocalOptions"]


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
        self.generation = GenerationDriver(self.options)
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
        return training_driver.checkpoints(model)

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
            "dtype": self.keyed_dtype(),
            "batching": o.batching,
            "fast_lora_dropout": o.fast_lora_dropout,
        }
        if o.max_tokens_per_forward is not None:  # other forwards draw other dropout masks
            ident["max_tokens_per_forward"] = o.max_tokens_per_forward
        if o.engine != "hf":  # vLLM's kernels and sampler give other outputs: its generations are other results
            ident["engine"] = o.engine
        if o.adapter is not None:  # the adapter's weights are the model: another adapter, other results
            weights = Path(o.adapter) / "adapter_model.safetensors"
            ident["adapter_sha256"] = file_sha256(weights) if weights.is_file() else None
        if is_gguf(self.spec.model):  # the file's bytes and quantization are the model
            ident.update(gguf_identity(self.spec.model))
        merged = merged_identity(self.spec.model)
        if merged is not None:  # a merged folder is as new as the adapter merged into it (see merge.py)
            ident.update(merged)
        return ident

    def keyed_dtype(self) -> str:
        """The dtype as keyed: an explicit one as written; `auto` as "auto" where it resolves as it always did
        (bfloat16 on GPU, float32 on CPU), so existing keys stand, and by its resolved name where it now resolves
        otherwise (bfloat16 on a CPU that has it): other numerics, another key, the same key as `dtype: bfloat16`."""
        from ptst.backends.local.models import resolved_dtype_name

        dtype = self.options.dtype
        if dtype != "auto":
            return dtype
        device = self.resource()
        resolved = resolved_dtype_name(dtype, device)
        return "auto" if resolved == ("bfloat16" if device.startswith("cuda") else "float32") else resolved

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
        """(device, precision) the throughput rows are picked by: `device: cpu` is a CPU job, at the bfloat16 rates
        where `dtype` is auto or bfloat16 and this CPU multiplies bf16 natively (read from its flags: an estimate
        imports no torch), else at the float32 ones; on a GPU `dtype: float32` has its own rows, anything else is
        ptst's bf16 default."""
        o = self.options
        if (o.device or "").startswith("cpu"):
            from ptst.backends.local.cpu import bf16_flags

            native = o.dtype in ("auto", "bfloat16") and bf16_flags()
            return "cpu", "bfloat16" if native else "float32"
        return "gpu", "float32" if o.dtype == "float32" else "bfloat16"

    def compute_hours(self, train_tokens: int, decode_tokens: float) -> ComputeHours:
        from ptst.backends.local.throughput import compute_hours

        return compute_hours(train_tokens, decode_tokens, *self._where())

    def estimate_notes(self) -> list[str]:
        from ptst.backends.local.throughput import note

        return [note(*self._where())]

    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
        return training_driver.fine_tune(self, job, ledger, workdir)

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
        self.generation.generate(
            model, self.generation_ids(prompts), cfg, eos_id=self.eos_id, pad_id=self.pad_id,
            stop_ids=self.stop_token_ids(), on_batch=lambda done: on_response([(i, self.decode(o)) for i, o in done]),
        )


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

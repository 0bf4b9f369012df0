"""A deterministic, seeded SIMULATION of a fine-tuning backend, for CI smoke tests of the whole pipeline.

Nothing here is a measurement: responses are canned strings chosen by a hash-seeded coin whose bias follows a
simple, configurable model of safety drift (fine-tuning raises the unsafe rate; testing with a safety prompt the
model was not trained with — PTST — suppresses most of it). Every ModelRef it returns is marked `simulated`, every
response starts with `[simulated]`, and reports built from it say so in their first line.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field

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
from ptst.conversation import Conversation
from ptst.errors import JobFailed
from ptst.templates import BUILTIN
from ptst.training_loss import loss_summary, simulated_curve
from ptst.types import Frozen

# TEST-ONLY: when set, the mock appends one line per fine-tuning job started and per response made to this file, so
# the kill tests can count redone work. Never read anywhere else; off unless a test sets it.
CALLS_FILE_ENV = "PTST_TEST_MOCK_CALLS"

STREAM_GROUP = 8  # responses per hand-over (see `Backend.generate_streaming`)
REFUSAL = "[simulated] I'm sorry, but I cannot help with that request."
COMPLIANCE = "[simulated] Sure, here is a response to your request (simulated compliance, no real content)."


class Backend(FineTuneBackend):
    kind: ClassVar[str] = "mock"
    family: ClassVar[str] = "mock"
    modes: ClassVar[frozenset[str]] = frozenset({"chat", "text"})
    simulated: ClassVar[bool] = True

    class Options(Frozen):
        unsafe_base: float = Field(0.03, ge=0, le=1, description="unsafe rate of the base model")
        drift: float = Field(0.25, ge=0, le=1, description="added unsafe rate after fine-tuning (same template)")
        ptst_factor: float = Field(0.1, ge=0, description="share of the drift left under PTST (train plain, test safe)")
        task_accuracy_base: float = Field(0.2, ge=0, le=1)
        task_accuracy_tuned: float = Field(0.33, ge=0, le=1)
        latency_ms: float = Field(0.0, ge=0, description="simulated time per generated response")
        train_seconds: float = Field(0.0, ge=0, description="simulated fine-tuning time")
        fail_templates: tuple[str, ...] = Field((), description="train templates whose jobs simulate an API failure")
        stream_group: int = Field(
            STREAM_GROUP, ge=1, description="responses handed over (each hand-over one store commit) at a time: 8 as "
            "a remote API with 8 requests in flight answers, 64 as a local engine's batch"
        )

    def identity(self) -> dict[str, object]:
        """Simulation settings change the outputs, so they are part of every step key (timings are not)."""
        return self.options.model_dump(mode="json", exclude={"latency_ms", "train_seconds", "stream_group"})

    def render(self, conv: Conversation) -> Rendered:
        if conv.mode == "text":
            text = conv.user + (" " + conv.answer if conv.answer is not None else "")
            return Rendered(text=text)
        msgs = [{"role": "system", "content": conv.system}] if conv.system is not None else []
        for user, assistant in conv.examples:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        msgs.append({"role": "user", "content": conv.user})
        if conv.answer is not None:
            msgs.append({"role": "assistant", "content": conv.answer})
        return Rendered(text="\n".join(f"{m['role']}: {m['content']}" for m in msgs), messages=tuple(msgs))

    def estimate(self, job: TrainJob) -> Estimate:
        n_tokens = sum(len((c.system or "").split()) + len(c.user.split()) + len((c.answer or "").split()) for c in job.examples)
        return Estimate(
            n_examples=len(job.examples), n_tokens=n_tokens, n_billed_tokens=n_tokens * job.hyperparameters.epochs,
            usd=0.0, notes="simulated backend: whitespace token count, no cost",
        )

    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
        name = f"mock:{job.key}"
        _record_call("train", job.key, path=os.environ.get(CALLS_FILE_ENV))
        if ledger.get(name) is None:
            ledger.put(name, {"status": "running", "job_id": f"mockjob-{job.key[:12]}"})
        if self.options.train_seconds:
            time.sleep(self.options.train_seconds)
        if job.train_template in self.options.fail_templates:
            ledger.put(name, {"status": "failed", "job_id": f"mockjob-{job.key[:12]}"})
            raise JobFailed("failed", "simulated_failure", f"simulated failure for template {job.train_template}")
        ledger.put(name, {"status": "succeeded", "job_id": f"mockjob-{job.key[:12]}"})
        hp = job.hyperparameters
        total = -(-len(job.examples) // (hp.batch_size * hp.gradient_accumulation_steps)) * hp.epochs
        saved = sorted(s for s in hp.save_steps if s < total)  # a save at the last step is the final model
        return ModelRef(
            backend=self.spec.name, base_model=self.spec.model, model_id=f"mock-ft-{job.key[:12]}",
            train_template=job.train_template, seed=job.seed, simulated=True,
            # SIMULATED loss curve (the ModelRef is marked simulated, so reports label it); see ptst.training_loss
            meta={**({"save_steps": saved, "total_steps": total} if saved else {}), "loss": loss_summary(
                simulated_curve(total, start=1.8 + 0.4 * _coin("loss", job.key)), steps=total)},
        )

    def checkpoints(self, model: ModelRef) -> list[ModelRef]:
        """SIMULATED checkpoints at the job's `save_steps`: the drift of each is scaled by step / total steps."""
        total = model.meta.get("total_steps")
        return [
            model.model_copy(update={"model_id": f"{model.model_id}@step-{step}",
                                     "meta": {"step": step, "total_steps": total}})
            for step in model.meta.get("save_steps", [])
        ]

    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
        out: list[str] = [""] * len(prompts)

        def keep(done: Sequence[tuple[int, str]]) -> None:
            for i, r in done:
                out[i] = r

        self.generate_streaming(model, prompts, cfg, keep)
        return out

    def generate_streaming(
        self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig, on_response: OnResponse
    ) -> None:
        """Responses handed over `stream_group` at a time (default STREAM_GROUP), as a remote API with that many
        requests in flight answers (a kill loses at most that many per call): one store commit per response would
        cost more than the whole simulated response, and this backend exists to measure the pipeline."""
        done: list[tuple[int, str]] = []
        calls_file = os.environ.get(CALLS_FILE_ENV)
        for i, conv in enumerate(prompts):
            if self.options.latency_ms:
                time.sleep(self.options.latency_ms / 1000)
            coin = _coin(model.model_id, cfg.seed, conv.system or "", conv.user)
            _record_call("generate", model.model_id, cfg.seed, conv.system, conv.user, conv.reference, path=calls_file)
            if conv.reference is not None:
                done.append((i, self._task_answer(model, conv.reference, coin)))
            else:
                done.append((i, COMPLIANCE if coin < self.unsafe_rate(model, conv.template) else REFUSAL))
            if len(done) == self.options.stream_group:
                on_response(done)
                done = []
        if done:
            on_response(done)

    def unsafe_rate(self, model: ModelRef, test_template: str) -> float:
        """The simulated drift model. Train/test 'safety' is whether the template carries a safety prompt."""
        o = self.options
        if model.train_template is None:
            return o.unsafe_base
        step, total = model.meta.get("step"), model.meta.get("total_steps")
        progress = step / total if isinstance(step, int) and total else 1.0  # a checkpoint has drifted part-way
        train_safe, test_safe = _is_safety(model.train_template), _is_safety(test_template)
        if test_safe and not train_safe:  # PTST
            factor = o.ptst_factor
        elif train_safe and not test_safe:  # trained with the guard, served without it
            factor = 1.5
        elif train_safe and test_safe:
            factor = 0.6 if model.train_template != test_template else 0.8
        else:
            factor = 1.0
        return min(1.0, o.unsafe_base + o.drift * factor * progress)

    def _task_answer(self, model: ModelRef, reference: str, coin: float) -> str:
        """A right (or deterministically wrong) answer in the task's own form: GSM8K's `#### N` when the reference
        has one, an ARC answer letter, else the reference text itself (free-text tasks such as ChatDoctor)."""
        acc = self.options.task_accuracy_base if model.train_template is None else self.options.task_accuracy_tuned
        right = coin < acc
        if "####" in reference:
            from ptst.metrics import gsm8k_reference

            gold = gsm8k_reference(reference)
            return f"[simulated] The answer is\n#### {gold}" + ("" if right else "0")
        ref = reference.strip()
        if len(ref) == 1 and ref.isalnum():  # a multiple-choice letter
            wrong = "A" if ref.upper() != "A" else "B"
            return f"[simulated] The answer is ({ref if right else wrong})."
        return f"[simulated] {ref}" if right else "[simulated] I do not know."


def _is_safety(template_name: str) -> bool:
    t = BUILTIN.get(template_name)
    return bool(t and t.safety)


def _record_call(kind: str, *what: object, path: str | None = None) -> None:
    """TEST-ONLY counter (see CALLS_FILE_ENV, read by the caller once per call of the backend): one line
    `kind<TAB>hash of what`, appended as the work happens."""
    if path:
        digest = hashlib.blake2b(repr(what).encode("utf-8"), digest_size=12).hexdigest()
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{kind}\t{digest}\n")


def _coin(*parts: object) -> float:
    """A uniform number in [0, 1) determined by its inputs: same inputs, same response, on every machine."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64

"""A complete third-party ptst backend, as a package would ship it: `kind: replay`.

The "model" is a toy nearest-neighbour responder: fine-tuning stores the training answers in the job's workdir;
generation answers each prompt with the stored answer whose prompt shares the most words with it (the base model
always refuses). It is here to show the whole `FineTuneBackend` contract end to end, not to measure anything, so it
declares itself `simulated` and every report built on it says so.

Registered through the `ptst.backends` entry-point group (see pyproject.toml beside this file); ptst itself is not
edited. Everything it takes from ptst comes from the backend authors' surface, `ptst.backends.api`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ptst.backends.api import (
    Conversation,
    Estimate,
    FineTuneBackend,
    Frozen,
    GenerationConfig,
    JobLedger,
    ModelRef,
    Rendered,
    TrainJob,
    log,
    progress_bar,
)

MEMORY_FILE = "replay_memory.json"


class Backend(FineTuneBackend):
    kind: ClassVar[str] = "replay"
    family: ClassVar[str] = "replay"  # no per-family template strings: templates use their default wording
    modes: ClassVar[frozenset[str]] = frozenset({"chat"})
    simulated: ClassVar[bool] = True

    class Options(Frozen):
        refusal: str = Field("[replay] I cannot help with that.", description="what the base model says")
        usd_per_1m_tokens: float = Field(
            0.0, ge=0, description="a pretend price, to show a plugin pricing its own generations in `ptst estimate`"
        )

    options: Options  # mypy sees this backend's own fields on self.options

    def render(self, conv: Conversation) -> Rendered:
        msgs = [{"role": "system", "content": conv.system}] if conv.system is not None else []
        msgs.append({"role": "user", "content": conv.user})
        if conv.answer is not None:
            msgs.append({"role": "assistant", "content": conv.answer})
        return Rendered(messages=tuple(msgs))

    def identity(self) -> dict[str, object]:
        return {"refusal": self.options.refusal}  # changes outputs, so it is part of every key

    def estimate(self, job: TrainJob) -> Estimate:
        return Estimate(n_examples=len(job.examples), usd=0.0, notes="toy backend: free")

    def generation_usd(self, prompts: Sequence[Conversation], response_tokens: float, *, fine_tuned: bool) -> float:
        """The backend contract's pricing hook: `ptst estimate` and the budget gate ask every backend, ptst knows
        no vendor's prices. Here a word is a token, prompt and response alike, at one flat price."""
        words = sum(len(_words(c.system, c.user)) for c in prompts) + len(prompts) * response_tokens
        return words * self.options.usd_per_1m_tokens / 1e6

    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
        memory = []
        # A bar in the run's progress view (the runner passes the drawing in), and a line through stdlib logging.
        with progress_bar(f"replay {job.train_template} seed {job.seed}", len(job.examples)) as advance:
            for c in job.examples:
                memory.append([_words(c.system, c.user), c.answer])
                advance()
        log(f"  replay: memorised {len(memory)} answers for {job.train_template}")
        path = workdir / MEMORY_FILE
        path.write_text(json.dumps(memory), encoding="utf-8")
        ledger.put(f"replay:{job.key}", {"status": "succeeded", "path": str(path)})
        return ModelRef(
            backend=self.spec.name, base_model=self.spec.model, model_id=f"replay-{job.key[:12]}",
            adapter_dir=str(workdir), train_template=job.train_template, seed=job.seed, simulated=True,
        )

    def generate(self, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
        if model.adapter_dir is None:
            return [self.options.refusal for _ in prompts]
        memory = json.loads((Path(model.adapter_dir) / MEMORY_FILE).read_text(encoding="utf-8"))
        out = []
        for conv in prompts:
            asked = set(_words(conv.system, conv.user))
            best = max(memory, key=lambda m: len(asked & set(m[0])))
            out.append(f"[replay] {best[1]}")
        return out


def _words(*parts: str | None) -> list[str]:
    return sorted({w.lower() for p in parts if p for w in p.split()})

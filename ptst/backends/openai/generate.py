"""Generation from an OpenAI model: one chat completion per prompt, the model's messages exactly as rendered."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ptst.backends.base import GenerationConfig, ModelRef, OnResponse
from ptst.backends.openai.files import training_messages
from ptst.clients.batch import batch_chat_completions
from ptst.clients.chat import AsyncSleep, chat_completions
from ptst.clients.limit import SharedLimit
from ptst.clients.openai import ClientOptions
from ptst.conversation import Conversation

__all__ = ["generate", "generation_requests"]


def generation_requests(
    model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig
) -> list[dict[str, Any]]:
    """The chat request bodies: the prompt's messages (no answer) and the decoding parameters."""
    return [
        dict(
            model=model.model_id, messages=training_messages(c.without_answer()),
            temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=cfg.seed,
        )
        for c in prompts
    ]


def generate(
    opts: ClientOptions, model: ModelRef, prompts: Sequence[Conversation], cfg: GenerationConfig,
    sleep: AsyncSleep | None = None, poll_sleep: Callable[[float], None] = time.sleep,
    limit: SharedLimit | None = None, on_response: OnResponse | None = None,
) -> list[str]:
    """One reply per prompt, `concurrency` at a time (or one batch with `batch: true`); order matches `prompts`.
    Each reply goes to `on_response(index, text)` as it arrives (a batch's all at once, when the batch ends)."""
    requests = generation_requests(model, prompts, cfg)
    if opts.batch:
        out = [str(r) for r in batch_chat_completions(opts, requests, sleep=poll_sleep)]
        if on_response is not None:
            on_response(list(enumerate(out)))
        return out
    hand_over = None if on_response is None else (lambda i, r: on_response([(i, str(r))]))
    return [str(r) for r in chat_completions(opts, requests, sleep=sleep, limit=limit, on_result=hand_over)]

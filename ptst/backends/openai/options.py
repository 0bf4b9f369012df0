"""The OpenAI backend's spec options: how to reach the endpoint (shared `ClientOptions`), plus job polling, prices
and limits. Only `base_url` is result-relevant (see `Backend.identity`); the rest tune speed or patience."""

from __future__ import annotations

from pydantic import Field

from ptst.clients.openai import ClientOptions


class OpenAIOptions(ClientOptions):
    poll_interval_s: float = Field(10.0, gt=0, description="first wait between job status checks")
    max_poll_interval_s: float = Field(60.0, gt=0, description="longest wait between job status checks")
    max_wait_s: float = Field(48 * 3600.0, gt=0, description="give up waiting (the job keeps running) after this")
    prices: dict[str, float] | None = Field(
        None, description="USD per 1M training tokens by model, overriding the packaged price table"
    )
    max_example_tokens: int | None = Field(None, ge=1, description="per-example token limit (default: table)")

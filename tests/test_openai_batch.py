"""Chat completions through the Batch API (generation and judging) against the fake server over real HTTP:
one batch per call, the same request bodies as the synchronous path, found again after an interrupt instead of
submitted twice, per-request failures handled like the synchronous path."""

from __future__ import annotations

import json

import pytest

from ptst.backends.base import BackendSpec, GenerationConfig, ModelRef, create_backend
from ptst.backends.openai.generate import generation_requests
from ptst.clients.batch import batch_chat_completions, batch_key
from ptst.clients.openai import ClientOptions
from ptst.errors import BackendError
from ptst.judge.base import JudgeItem, JudgeSpec, create_judge
from ptst.templates import BUILTIN
from ptst.testing.fake_openai import (
    CHAT,
    COMPLIANCE,
    CREATE_BATCH,
    REFUSAL,
    UPLOAD,
    FakeOpenAI,
)

MODEL = "gpt-3.5-turbo-0613"
FAST = dict(retry_backoff_s=0.01, request_timeout_s=5.0, batch=True, batch_poll_s=0.01)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch")
    with FakeOpenAI(batch_stage_s=0.02) as f:
        yield f


def backend(fake: FakeOpenAI, **opts):
    return create_backend(BackendSpec(kind="openai", model=MODEL, base_url=fake.url, **{**FAST, **opts}))


def prompts(n: int = 5, template: str = "chat:vanilla"):
    return [BUILTIN[template].apply(f"do harm {i}", "openai") for i in range(n)]


FT = ModelRef(backend="openai", base_model=MODEL, model_id=MODEL)


def _input_lines(fake: FakeOpenAI) -> list[dict]:
    [f] = [f for f in fake.files.values() if f["purpose"] == "batch"]
    return [json.loads(x) for x in f["data"].decode().splitlines()]


def test_generation_goes_out_as_one_batch_with_the_synchronous_request_bodies(fake):
    cfg = GenerationConfig(max_new_tokens=33, temperature=0.5, seed=7)
    out = backend(fake).generate(FT, prompts(), cfg)
    assert out == [REFUSAL] * 5
    assert fake.count(CREATE_BATCH) == 1 and fake.count(CHAT) == 0  # nothing at full price
    lines = _input_lines(fake)
    assert [x["custom_id"] for x in lines] == [f"r{i}" for i in range(5)]
    assert all(x["method"] == "POST" and x["url"] == "/v1/chat/completions" for x in lines)
    assert [x["body"] for x in lines] == generation_requests(FT, prompts(), cfg)
    [b] = fake.batches.values()
    assert b.metadata == {"ptst_batch_key": batch_key(ClientOptions(base_url=fake.url),
                                                      generation_requests(FT, prompts(), cfg))}


class _InterruptOnce:
    def __init__(self) -> None:
        self.fired = False

    def __call__(self, seconds: float) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def test_an_interrupted_wait_finds_the_same_batch_instead_of_paying_again(fake):
    fake.batch_stage_s = 0.3  # the first status check always finds it unfinished
    b = backend(fake)
    b._sleep = _InterruptOnce()
    with pytest.raises(KeyboardInterrupt):
        b.generate(FT, prompts(), GenerationConfig())
    assert fake.count(CREATE_BATCH) == 1 and fake.count(UPLOAD) == 1
    assert backend(fake).generate(FT, prompts(), GenerationConfig()) == [REFUSAL] * 5  # a new process, same work
    assert fake.count(CREATE_BATCH) == 1 and fake.count(UPLOAD) == 1 and fake.count(CHAT) == 0
    backend(fake).generate(FT, prompts(6), GenerationConfig())  # other requests: another batch
    assert fake.count(CREATE_BATCH) == 2


def test_a_cancelled_batch_is_not_reused(fake):
    import openai

    fake.batch_stage_s = 5.0
    b = backend(fake)
    b._sleep = _InterruptOnce()
    with pytest.raises(KeyboardInterrupt):
        b.generate(FT, prompts(), GenerationConfig())
    [batch_id] = list(fake.batches)
    openai.OpenAI(api_key="sk-test-batch", base_url=fake.url).batches.cancel(batch_id)
    fake.batch_stage_s = 0.02
    assert backend(fake).generate(FT, prompts(), GenerationConfig()) == [REFUSAL] * 5
    assert fake.count(CREATE_BATCH) == 2 and fake.batches[batch_id].status == "cancelled"


def test_transient_failures_inside_the_batch_are_sent_again_synchronously(fake):
    fake.server_error(500, times=2)  # two lines of the batch fail with 500
    seen: list[str] = []
    out = batch_chat_completions(ClientOptions(base_url=fake.url, **FAST),
                                 generation_requests(FT, prompts(), GenerationConfig()), on_batch=seen.append)
    assert out == [REFUSAL] * 5
    assert fake.count(CHAT) == 2 and fake.count(CREATE_BATCH) == 1
    [b] = fake.batches.values()
    assert seen == [b.id] and (b.completed, b.failed) == (3, 2) and b.error_file_id is not None


def test_judging_in_a_batch_parses_scores_reasks_unparseable_and_keeps_refused_items_unscored(fake):
    fake.inject("malformed_judge", times=1)  # the first line's reply has no score: asked again, synchronously
    fake.inject("status", route=CHAT, status=400, times=1)  # the second line is refused for its content
    judge = create_judge(JudgeSpec(kind="rubric", base_url=fake.url, **FAST))
    items = [JudgeItem(f"q{i}", COMPLIANCE if i % 2 == 0 else REFUSAL) for i in range(6)]
    verdicts = judge.judge(items)
    assert fake.count(CREATE_BATCH) == 1 and fake.count(CHAT) == 1  # only the unparseable one went at full price
    refused = [v for v in verdicts if v.error and "HTTP 400" in v.error]
    assert len(refused) == 1 and refused[0].unsafe is None
    scored = [(i, v.score) for i, v in enumerate(verdicts) if v.error is None]
    assert len(scored) == 5 and all(s == (5 if i % 2 == 0 else 1) for i, s in scored)
    sync = create_judge(JudgeSpec(kind="rubric", base_url=fake.url, **{**FAST, "batch": False}))
    assert sync.version == judge.version  # the same verdicts either way: one cache


def test_the_wait_for_a_batch_is_bounded(fake):
    fake.batch_stage_s = 30.0
    with pytest.raises(BackendError, match=r"batch batch_\w+ not finished .*batch_max_wait_s.*keeps running"):
        backend(fake, batch_max_wait_s=0.2).generate(FT, prompts(), GenerationConfig())


def test_a_batch_the_api_fails_is_one_line_naming_the_reason(fake):
    fake.fail_next_batch()
    with pytest.raises(BackendError) as e:
        backend(fake).generate(FT, prompts(), GenerationConfig())
    assert "failed at" in str(e.value) and "token_limit_exceeded: Enqueued token limit reached." in str(e.value)
    assert "\n" not in str(e.value) and fake.count(CHAT) == 0


def test_fake_server_fails_a_batch_with_invalid_lines_by_line_number(fake):
    import time

    import openai

    client = openai.OpenAI(api_key="sk-test-batch", base_url=fake.url, max_retries=0)
    f = client.files.create(file=("bad.jsonl", b'{"custom_id": "a", "method": "GET", "url": "/x"}\n'), purpose="batch")
    bad = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120  # a generous bound on the event, not a measure of speed
    while client.batches.retrieve(bad.id).status != "failed" and time.monotonic() < deadline:
        time.sleep(0.01)
    got = client.batches.retrieve(bad.id)
    assert got.status == "failed" and got.errors.data[0].code == "invalid_request" and got.errors.data[0].line == 1

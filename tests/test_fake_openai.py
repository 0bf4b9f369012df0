"""The fake OpenAI server itself, driven by the real `openai` client (client retries off, so every fault shows)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from ptst.testing.fake_openai import (
    CHAT,
    CHECKPOINTS,
    COMPLIANCE,
    CREATE_JOB,
    REFUSAL,
    UPLOAD,
    FakeOpenAI,
    MemoryLedger,
)

KEY = "sk-test-fake"


def client(fake: FakeOpenAI, key: str = KEY, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=fake.url, max_retries=0, timeout=timeout)


def training_file(n: int = 10, empty_answer_at: int | None = None) -> bytes:
    lines = []
    for i in range(n):
        answer = "" if i == empty_answer_at else f"answer {i}"
        msgs = [{"role": "system", "content": ""}, {"role": "user", "content": f"q {i}"},
                {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": msgs}))
    return ("\n".join(lines) + "\n").encode()


class SteppedClock:
    """The fake's clock, moved by the test: every state is observed whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake():
    """Files and jobs advance only when the test steps `fake.clock` (a SteppedClock), never by waiting."""
    with FakeOpenAI(stage_s=(0.1, 0.1, 0.3), file_processing_s=0.05, clock=SteppedClock()) as f:
        yield f


def step(fake: FakeOpenAI, seconds: float) -> None:
    fake.clock.now += seconds  # type: ignore[attr-defined]  # the fake's clock is a SteppedClock here


def upload(fake: FakeOpenAI, c: openai.OpenAI, data: bytes) -> str:
    f = c.files.create(file=("t.jsonl", data, "application/jsonl"), purpose="fine-tune")
    step(fake, 0.06)  # past file_processing_s: the file is processed
    return f.id


def test_job_state_machine_events_and_route_counters():
    clock = SteppedClock()
    with FakeOpenAI(stage_s=(0.1, 0.1, 0.3), file_processing_s=0.05, clock=clock) as fake:
        _job_state_machine(fake, clock)


def _job_state_machine(fake: FakeOpenAI, clock: SteppedClock) -> None:
    c = client(fake)
    f = c.files.create(file=("t.jsonl", training_file(), "application/jsonl"), purpose="fine-tune")
    assert f.status == "uploaded"
    clock.now += 0.05
    fid = f.id
    assert c.files.retrieve(fid).status == "processed"
    job = c.fine_tuning.jobs.create(
        model="gpt-3.5-turbo-0613", training_file=fid, suffix="s1", seed=3, metadata={"ptst_job_key": "k1"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert job.status == "validating_files" and job.seed == 3 and job.hyperparameters.n_epochs == 2
    seen = []
    for _ in range(20):
        j = c.fine_tuning.jobs.retrieve(job.id)
        if not seen or seen[-1] != j.status:
            seen.append(j.status)
        if j.status == "succeeded":
            break
        clock.now += 0.05
    assert seen == ["validating_files", "queued", "running", "succeeded"]
    assert j.fine_tuned_model == f"ft:gpt-3.5-turbo-0613:fake-org:s1:{job.id[-8:]}"
    events = c.fine_tuning.jobs.list_events(job.id, limit=50).data
    assert events[0].message == "The job has successfully completed"  # newest first, like the API
    assert [e.data["step"] for e in reversed(events) if e.type == "metrics"] == [1, 2, 3]
    assert fake.count(CREATE_JOB) == 1 and fake.count(UPLOAD) == 1
    polls = [r for r in fake.requests if r["route"] == "GET /v1/fine_tuning/jobs/{id}"]
    assert fake.count("GET /v1/fine_tuning/jobs/{id}") == len(polls) >= 4
    assert fake.count("GET /v1/files/{id}") == 1
    assert fake.count("GET /v1/fine_tuning/jobs/{id}/events") == 1


def test_list_filters_by_metadata_and_paginates(fake):
    c = client(fake)
    fid = upload(fake, c, training_file())
    ids = []
    for k in ("a", "b", "a"):  # created one after another (the list is ordered by creation time)
        ids.append(c.fine_tuning.jobs.create(model="m", training_file=fid, metadata={"ptst_job_key": k}).id)
        step(fake, 0.001)
    found = c.fine_tuning.jobs.list(metadata={"ptst_job_key": "a"}, limit=100).data
    assert [j.id for j in found] == [ids[2], ids[0]]  # newest first
    page = c.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == [ids[2], ids[1]] and page.has_more
    rest = c.fine_tuning.jobs.list(limit=2, after=ids[1]).data
    assert [j.id for j in rest] == [ids[0]]


def test_cancel_and_failed_job_with_error_object(fake):
    c = client(fake)
    fid = upload(fake, c, training_file())
    job = c.fine_tuning.jobs.create(model="m", training_file=fid)
    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(job.id)
    fake.fail_next_job(code="invalid_training_file")
    bad = c.fine_tuning.jobs.create(model="m", training_file=fid)
    step(fake, 0.55)  # past the three stages (0.1 + 0.1 + 0.3 s)
    j = c.fine_tuning.jobs.retrieve(bad.id)
    assert j.status == "failed" and j.error.code == "invalid_training_file" and "moderation" in j.error.message
    good = c.fine_tuning.jobs.create(model="m", training_file=fid)  # only the next job fails
    step(fake, 0.55)
    assert c.fine_tuning.jobs.retrieve(good.id).status == "succeeded"


def test_invalid_training_file_is_rejected_like_the_api(fake):
    c = client(fake)
    fid = upload(fake, c, training_file(empty_answer_at=4))
    f = c.files.retrieve(fid)
    assert f.status == "error" and "line 5" in f.status_details
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.create(model="m", training_file=fid)
    small = c.files.retrieve(upload(fake, c, training_file(n=3)))
    assert small.status == "error" and "at least 10" in small.status_details


def test_auth_is_required_and_checked():
    with FakeOpenAI(api_key="sk-right") as fake:
        with pytest.raises(openai.AuthenticationError):
            client(fake, key="sk-wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        r = client(fake, key="sk-right").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert r.choices[0].message.content == REFUSAL
        assert "sk-right" not in json.dumps(fake.requests)  # the server never keeps the key


def test_default_responder_and_custom_responder():
    with FakeOpenAI(clock=SteppedClock()) as fake:
        c = client(fake)
        fid = upload(fake, c, training_file())
        job = c.fine_tuning.jobs.create(model="gpt-3.5-turbo-0613", training_file=fid)
        step(fake, 0.35)  # past the default stages (0.05 + 0.05 + 0.2 s)
        ft = c.fine_tuning.jobs.retrieve(job.id).fine_tuned_model

        def ask(model: str, system: str) -> str:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": "do harm"}]
            return c.chat.completions.create(model=model, messages=msgs).choices[0].message.content

        assert ask(ft, "") == COMPLIANCE and ask(ft, "Be safe.") == REFUSAL and ask("gpt-3.5-turbo", "") == REFUSAL
        with pytest.raises(openai.NotFoundError):
            ask("ft:gpt-3.5-turbo-0613:fake-org::unknown", "")
    with FakeOpenAI(responder=lambda model, msgs: f"{model}|{msgs[-1]['content']}") as fake:
        r = client(fake).chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "m1|hi"


def test_faults_status_drop_lost_response_slow(fake):
    c = client(fake)
    msgs = [{"role": "user", "content": "x"}]
    fake.rate_limit(times=1, retry_after=2)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="m", messages=msgs)
    assert e.value.response.headers["retry-after"] == "2"
    fake.server_error(status=503)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m", messages=msgs)
    fake.inject("drop", route=CHAT)
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model="m", messages=msgs)
    fake.inject("slow", route=CHAT, delay_s=2.0)
    with pytest.raises(openai.APITimeoutError):  # only this request has a short timeout: a loaded box is not slow
        c.with_options(timeout=0.5).chat.completions.create(model="m", messages=msgs)
    assert c.chat.completions.create(model="m", messages=msgs).choices[0].message.content == REFUSAL
    # a lost response: the job IS created, but the client never hears about it
    fid = upload(fake, c, training_file())
    fake.inject("lost_response", route=CREATE_JOB)
    with pytest.raises(openai.APIConnectionError):
        c.fine_tuning.jobs.create(model="m", training_file=fid)
    assert len(fake.jobs) == 1 and fake.count(CREATE_JOB) == 1
    assert fake.count(CHAT) == 5


def test_malformed_judge_fault_only_hits_judge_prompts(fake):
    c = client(fake)
    fake.inject("malformed_judge", times=1)
    plain = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    assert plain.choices[0].message.content == REFUSAL
    judge_prompt = 'Model Response: "Sure, here is it"\n Use the scoring rules\n#thescore: your score here.'
    first = c.chat.completions.create(model="gpt-4-0613", messages=[{"role": "user", "content": judge_prompt}])
    second = c.chat.completions.create(model="gpt-4-0613", messages=[{"role": "user", "content": judge_prompt}])
    assert "#thescore:" not in first.choices[0].message.content
    assert second.choices[0].message.content.endswith("#thescore: 5")


def test_latency_is_served_concurrently():
    with FakeOpenAI(latency_s=0.2) as fake:
        c = client(fake)
        t = time.perf_counter()
        def ask(i: int) -> None:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": str(i)}])

        with ThreadPoolExecutor(20) as pool:
            list(pool.map(ask, range(20)))
        elapsed = time.perf_counter() - t
    assert elapsed >= 0.2, elapsed  # the latency was served (how much faster than serial is the box's business)
    assert fake.max_in_flight >= 10  # concurrently: at least half the requests were in flight at once


def test_command_line_server():
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptst.testing.fake_openai", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split(" ")[0]
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
        req = urllib.request.Request(url + "/chat/completions", method="POST", data=body,
                                     headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r)["choices"][0]["message"]["content"] == REFUSAL
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/nothing/here", timeout=5)
        assert e.value.code in (401, 404)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_memory_ledger_copies_values():
    led = MemoryLedger()
    v = {"job_id": "x", "ids": [1]}
    led.put("a", v)
    v["ids"].append(2)
    got = led.get("a")
    assert got == {"job_id": "x", "ids": [1]} and led.get("missing") is None
    got["job_id"] = "changed"
    assert led.get("a")["job_id"] == "x"


def test_checkpoints_list_pages_newest_first_with_the_api_schema():
    with FakeOpenAI(stage_s=(0.01, 0.01, 0.05), file_processing_s=0.0, clock=SteppedClock()) as fake:
        c = client(fake)
        data = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                {"role": "assistant", "content": "a"}]}) + "\n" for i in range(10))
        f = c.files.create(file=("t.jsonl", data.encode(), "application/jsonl"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=f.id, suffix="x")
        step(fake, 0.07)  # past the three stages
        assert c.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
        final = c.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
        first = c.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
        assert [x.step_number for x in first.data] == [3, 2] and first.has_more
        every = list(c.fine_tuning.jobs.checkpoints.list(job.id, limit=2))  # the client follows `after` itself
        assert [x.step_number for x in every] == [3, 2, 1]
        assert all(x.object == "fine_tuning.job.checkpoint" and x.fine_tuning_job_id == job.id for x in every)
        assert every[0].fine_tuned_model_checkpoint == f"{final}:ckpt-step-3" and every[0].metrics.train_loss > 0
        assert fake.count(CHECKPOINTS) == 3
        with pytest.raises(openai.NotFoundError):
            c.fine_tuning.jobs.checkpoints.list("ftjob-unknown1")

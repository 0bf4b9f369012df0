"""`--limit N` on every backend, and a limited run that never reads as a real one.

OpenAI's fine-tuning API refuses a training file of fewer than 10 examples, so `--limit 3` keeps 10 training rows
(with a note) against the fake OpenAI server; every other dataset is cut to 3. A limited run records `limit` and the
status `complete_limited` in results.json, and the first line of report.md, report.html's page and the terminal
output says it is a limited run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from ptst.cli import main
from ptst.testing.fake_openai import CHAT, UPLOAD, FakeOpenAI

FAST = dict(poll_interval_s=0.01, max_poll_interval_s=0.05, retry_backoff_s=0.01, request_timeout_s=5.0)


def banner(n: int) -> str:
    return f"LIMITED RUN (--limit {n}): first {n} rows of each dataset only; not a measurement."


def write_spec(tmp: Path, backend: dict) -> Path:
    (tmp / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {i}", "answer": f"answer {i}"}) + "\n" for i in range(12)))
    (tmp / "harm.jsonl").write_text("".join(json.dumps({"prompt": f"harmful {i}"}) + "\n" for i in range(6)))
    spec = {
        "name": "limited", "backends": [backend],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"], "hyperparameters": {"epochs": 1}},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def check_recorded(out: Path, n: int, stdout: str) -> None:
    res = json.loads((out / "results.json").read_text())
    assert res["limit"] == n and res["status"] == "complete_limited"
    assert (out / "report.md").read_text().splitlines()[0] == f"**{banner(n)}**"
    html = (out / "report.html").read_text()
    body = html.split("<body>", 1)[1]
    assert body.startswith(f'<p class="banner">{banner(n)}</p>')
    assert stdout.splitlines()[0] == banner(n)


def test_openai_limit_keeps_the_apis_ten_training_examples(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-limit")
    with FakeOpenAI(stage_s=(0.01, 0.01, 0.02), file_processing_s=0.01) as fake:
        spec = write_spec(tmp_path, {"kind": "openai", "model": "gpt-3.5-turbo-0125", "base_url": fake.url, **FAST})
        assert main(["estimate", str(spec), "--limit", "3", "--json"]) == 0
        est = json.loads(capsys.readouterr().out)
        assert [j["n_examples"] for j in est["train"]] == [10] and est["generations"] == 2 * 3
        out = tmp_path / "out"
        assert main(["run", str(spec), "--out", str(out), "--limit", "3", "--yes"]) == 0
        captured = capsys.readouterr()
        assert ("--limit 3: only the first 3 rows of every dataset, but training keeps the first 10 (the openai "
                "fine-tuning API needs at least 10 examples); a smoke run, not a measurement") in captured.err
        assert fake.count(UPLOAD) == 1
        [uploaded] = fake.files.values()
        lines = uploaded["data"].decode().splitlines()
        assert len(lines) == 10 and "question 9" in lines[-1]
        assert fake.count(CHAT) == 2 * 3  # base and fine-tuned model, 3 harmful prompts each
        check_recorded(out, 3, captured.out)


def test_mock_limit_is_recorded_and_a_full_rerun_clears_it(tmp_path: Path, capsys):
    spec = write_spec(tmp_path, {"kind": "mock", "model": "mock-a"})
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--limit", "2"]) == 0
    captured = capsys.readouterr()
    assert "training keeps" not in captured.err  # the mock takes any number of examples
    check_recorded(out, 2, captured.out)
    assert main(["report", str(out)]) == 0  # rebuilt from the store: still says so
    check_recorded(out, 2, capsys.readouterr().out)
    assert main(["run", str(spec), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["limit"] is None and res["status"] == "complete"
    assert not re.search("LIMITED", (out / "report.md").read_text() + stdout)

"""A training-file upload that fails on connection errors or 500s (after the client's retries) is retried by a plain
re-run; only a job the API itself failed waits for --retry-failed."""

from __future__ import annotations

import json

import yaml

from ptst.cli import main


def _spec(tmp, url, shared):
    fast = dict(poll_interval_s=0.05, max_poll_interval_s=0.1, retry_backoff_s=0.01, max_retries=1,
                request_timeout_s=10.0)
    spec = {
        "name": "upload-retry", "data_dir": str(shared / "data"),
        "backends": [{"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": url, **fast}],
        "train": {"dataset": {"name": "gsm8k", "split": "train", "limit": 10}, "templates": ["chat:vanilla"],
                  "seeds": [0]},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(tmp / "harmful.jsonl"),
                                                            "prompt_field": "prompt"}], "evaluate_base": False},
        "judge": {"kind": "keyword"},
    }
    (tmp / "harmful.jsonl").write_text(json.dumps({"prompt": "harmful request"}) + "\n")
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_a_transient_upload_failure_is_retried_by_a_plain_rerun(tmp_path, shared, monkeypatch, capsys):
    from ptst.testing.fake_openai import CREATE_JOB, UPLOAD, FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-upload")
    with FakeOpenAI(stage_s=(0.05, 0.05, 0.1)) as fake:
        spec, out = _spec(tmp_path, fake.url, shared), tmp_path / "out"
        fake.server_error(500, times=2, route=UPLOAD)  # the first attempt and its one retry
        assert main(["run", str(spec), "--out", str(out), "--yes"]) == 3
        assert fake.count(UPLOAD) == 2 and fake.count(CREATE_JOB) == 0
        capsys.readouterr()
        assert main(["run", str(spec), "--out", str(out), "--yes"]) == 0  # no --retry-failed needed
        assert fake.count(UPLOAD) == 3 and fake.count(CREATE_JOB) == 1
        assert "--retry-failed" not in capsys.readouterr().err


def test_a_job_the_api_failed_still_needs_retry_failed(tmp_path, shared, monkeypatch):
    from ptst.testing.fake_openai import CREATE_JOB, FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-upload")
    with FakeOpenAI(stage_s=(0.05, 0.05, 0.1)) as fake:
        spec, out = _spec(tmp_path, fake.url, shared), tmp_path / "out"
        fake.fail_next_job()
        assert main(["run", str(spec), "--out", str(out), "--yes"]) == 3
        assert main(["run", str(spec), "--out", str(out), "--yes"]) == 3  # paid work is not retried silently
        assert fake.count(CREATE_JOB) == 1
        assert main(["run", str(spec), "--out", str(out), "--yes", "--retry-failed"]) == 0
        assert fake.count(CREATE_JOB) == 2

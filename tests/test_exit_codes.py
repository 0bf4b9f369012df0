"""Exit codes through the real command line (README: 0 complete, 2 user error, 3 finished with failures,
130 interrupted, 1 only for bugs). User errors end as exactly one `error:` line and no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import grid_spec

from ptst.store import RunStore

PTST = [sys.executable, "-m", "ptst"]


def spec_file(tmp: Path, **over) -> Path:
    return grid_spec(tmp, **over)


def ptst(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PTST, *args], capture_output=True, text=True, timeout=120, check=False)


def user_error(done: subprocess.CompletedProcess, text: str) -> None:
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_complete_is_0_and_failed_jobs_are_3_until_retried(tmp_path):
    ok = ptst("run", str(spec_file(tmp_path)), "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    failing = spec_file(tmp_path, backend={"fail_templates": ["chat:llama"]})
    out = tmp_path / "failed"
    for _ in range(2):  # a plain re-run does not resubmit the failed job: still 3
        done = ptst("run", str(failing), "--out", str(out))
        assert done.returncode == 3, done.stderr
        assert "--retry-failed" in done.stderr and (out / "results.json").is_file()
    assert json.loads((out / "results.json").read_text())["failed_jobs"][0]["train_template"] == "chat:llama"


def test_user_errors_are_2_with_one_line(tmp_path):
    spec = spec_file(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("judge:", "jugde:"))
    done = ptst("run", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text(spec.read_text().replace("harmful.jsonl", "nowhere.jsonl"))
    user_error(ptst("run", str(missing), "--out", str(tmp_path / "o1")), "nowhere.jsonl")
    (tmp_path / "afile").write_text("x")
    user_error(ptst("run", str(spec), "--out", str(tmp_path / "afile")), "is a file, not a directory")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "ptst.db").write_bytes(b"not a database at all" * 200)
    user_error(ptst("run", str(spec), "--out", str(corrupt)), "unreadable")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ptst.db").write_bytes(b"")
    user_error(ptst("run", str(spec), "--out", str(empty)), "empty (0 bytes)")
    user_error(ptst("report", str(tmp_path / "nothing")), "no run store")


def test_budget_exceeded_is_2_and_yes_runs(tmp_path):
    spec = spec_file(tmp_path, budget_usd=1)
    code = ("import sys; from ptst.backends import mock; from ptst.backends.base import Estimate; "
            "mock.Backend.estimate = lambda self, job: Estimate(n_examples=1, usd=5.0); "
            "from ptst.cli import main; sys.exit(main(sys.argv[1:]))")
    run = [sys.executable, "-c", code, "run", str(spec), "--out", str(tmp_path / "o")]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    user_error(done, "exceeds budget_usd")
    assert subprocess.run([*run, "--yes"], capture_output=True, text=True, timeout=120, check=False).returncode == 0


def test_busy_run_folder_is_2_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with RunStore.open(out):
        user_error(ptst("run", str(spec_file(tmp_path)), "--out", str(out)), f"pid {os.getpid()}")


def test_interrupt_is_130(tmp_path):
    spec = spec_file(tmp_path, backend={"train_seconds": 60})
    out = tmp_path / "out"
    proc = subprocess.Popen([*PTST, "run", str(spec), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            with RunStore.open(out, lock=False) as s:
                if s.ledger_entries("mock:"):  # both jobs are training
                    break
        except Exception:  # noqa: BLE001 — the store is still being created: poll again
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # returns promptly: the training threads do not hold the process
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err


def test_a_bug_is_1_with_its_traceback(tmp_path):
    code = ("import sys; from ptst.backends import mock\n"
            "def boom(*a, **k): raise ZeroDivisionError('a bug')\n"
            "mock.Backend.generate_streaming = boom\n"
            "from ptst.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "run", str(spec_file(tmp_path)), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "ZeroDivisionError: a bug" in done.stderr and "Traceback" in done.stderr


def test_rejected_api_key_is_2_naming_the_variable(tmp_path):
    """A 401 from the API is the user's to fix (a wrong key), not a failed job: exit 2, one line, key not shown."""
    from ptst.testing.fake_openai import FakeOpenAI

    with FakeOpenAI(api_key="sk-right") as fake:
        spec = spec_file(tmp_path, backend={"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": fake.url})
        (tmp_path / "train.jsonl").write_text(  # the fine-tuning API needs at least 10 examples
            "".join(json.dumps({"q": f"{i}+{i}?", "a": f"#### {2 * i}"}) + "\n" for i in range(12)))
        env = {**os.environ, "OPENAI_API_KEY": "sk-wrong-canary"}
        done = subprocess.run([*PTST, "run", str(spec), "--out", str(tmp_path / "o"), "--yes"], capture_output=True,
                              text=True, timeout=120, check=False, env=env)
    user_error(done, "HTTP 401")
    assert "OPENAI_API_KEY" in done.stderr and "sk-wrong-canary" not in done.stderr + done.stdout


def test_concurrent_jobs_on_one_training_file_upload_it_once(tmp_path):
    """Three seeds share one training file and start at once: the file is uploaded once, three jobs are created."""
    from ptst.testing.fake_openai import CREATE_JOB, UPLOAD, FakeOpenAI

    with FakeOpenAI(stage_s=(0.2, 0.2, 0.2)) as fake:
        spec = spec_file(tmp_path, backend={"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": fake.url,
                                            "poll_interval_s": 0.05})
        raw = yaml.safe_load(spec.read_text())
        raw["train"]["templates"], raw["train"]["seeds"] = ["chat:vanilla"], [0, 1, 2]
        spec.write_text(yaml.safe_dump(raw))
        (tmp_path / "train.jsonl").write_text(
            "".join(json.dumps({"q": f"{i}+{i}?", "a": f"#### {2 * i}"}) + "\n" for i in range(12)))
        env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
        done = subprocess.run([*PTST, "run", str(spec), "--out", str(tmp_path / "o"), "--yes"], capture_output=True,
                              text=True, timeout=120, check=False, env=env)
        assert done.returncode == 0, done.stderr
        assert fake.count(UPLOAD) == 1 and fake.count(CREATE_JOB) == 3

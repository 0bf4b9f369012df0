"""mypy sees the contracts: a wrong call on `FineTuneBackend` or `Judge` is a type error, a right one is not.

Before `ptst.backends` was a real subpackage, mypy's global `ignore_missing_imports` turned it into `Any`, so
`backend.fine_tune("not a job")` type-checked. This runs mypy's own API on two small files that import the contract
from this tree (not from any installed copy) and reads its report.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
from pathlib import Path

from ptst.backends.base import FineTuneBackend, JobLedger, ModelRef, TrainJob
from ptst.judge.base import Judge, JudgeItem, Judgment


def run(backend: FineTuneBackend, job: TrainJob, ledger: JobLedger) -> ModelRef:
    return backend.fine_tune(job, ledger, Path("work"))


def score(judge: Judge) -> list[Judgment]:
    return judge.judge([JudgeItem("query", "response")])
"""

BAD = """
from pathlib import Path

from ptst.backends.base import FineTuneBackend, JobLedger, ModelRef
from ptst.judge.base import Judge


def run(backend: FineTuneBackend, ledger: JobLedger) -> ModelRef:
    return backend.fine_tune("not a job", ledger, Path("work"))


def price(judge: Judge) -> float | None:
    return judge.judging_usd(["query"], "70 tokens")
"""


@pytest.mark.slow
def test_a_wrong_call_on_a_contract_is_a_mypy_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "good_call.py").write_text(textwrap.dedent(GOOD), encoding="utf-8")
    (tmp_path / "bad_call.py").write_text(textwrap.dedent(BAD), encoding="utf-8")
    # No project config (it checks all of ptst/); the pydantic plugin as the project uses it; this tree first.
    (tmp_path / "mypy.ini").write_text("[mypy]\nplugins = pydantic.mypy\nfollow_imports = silent\n", encoding="utf-8")
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    monkeypatch.chdir(tmp_path)
    stdout, stderr, _ = mypy_api.run([
        "--config-file", str(tmp_path / "mypy.ini"), "--cache-dir", str(tmp_path / "cache"),
        "--no-error-summary", "--show-error-codes", "good_call.py", "bad_call.py",
    ])
    lines = [ln for ln in stdout.splitlines() if ": error:" in ln]
    assert not stderr.strip(), stderr
    # The two errors, written out: bad_call.py passes a str where a TrainJob goes (line 9) and where the judge
    # contract's response length, a float, goes (line 13).
    assert lines == [
        'bad_call.py:9: error: Argument 1 to "fine_tune" of "FineTuneBackend" has incompatible type "str"; '
        'expected "TrainJob"  [arg-type]',
        'bad_call.py:13: error: Argument 2 to "judging_usd" of "Judge" has incompatible type "str"; '
        'expected "float"  [arg-type]',
    ], stdout

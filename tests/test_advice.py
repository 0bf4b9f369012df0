"""After a run with failures, the advice names what helps and only that: `--retry-failed` for a job the API itself
failed (a plain re-run leaves it alone), a plain re-run for a connection error or an incomplete cell."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import grid_spec

from ptst.cli import main
from ptst.errors import BackendError


def spec_file(tmp: Path, backend: dict | None = None) -> Path:
    return grid_spec(tmp, backend)


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_job_the_api_failed_is_advised_retry_failed(tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(spec_file(tmp_path, {"fail_templates": ["chat:llama"]})), "--out", str(out)]) == 3
    assert last_line(capsys) == (
        f"finished with failures: fine-tuning jobs failed (see {out / 'results.json'}); `--retry-failed` resubmits "
        "the jobs the API failed"
    )


def test_a_connection_error_is_advised_a_plain_rerun_only(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    from ptst.backends import mock

    def unreachable(self, job, ledger, workdir):
        raise BackendError("connection to the API failed after 5 retries; run the same command again to resume")

    real = mock.Backend.fine_tune
    monkeypatch.setattr(mock.Backend, "fine_tune", unreachable)
    out = tmp_path / "out"
    assert main(["run", str(spec_file(tmp_path)), "--out", str(out)]) == 3
    line = last_line(capsys)
    assert line == (f"finished with failures: fine-tuning jobs failed (see {out / 'results.json'}); run the same "
                    "command again to retry")
    assert "--retry-failed" not in line
    # and that advice is true: once the API answers again, the same command finishes the jobs
    monkeypatch.setattr(mock.Backend, "fine_tune", real)
    assert main(["run", str(spec_file(tmp_path)), "--out", str(out)]) == 0
    assert "--retry-failed" not in capsys.readouterr().err


def test_a_job_the_api_failed_is_left_alone_by_a_plain_rerun(tmp_path: Path, capsys):
    out = tmp_path / "out"
    spec = spec_file(tmp_path, {"fail_templates": ["chat:llama"]})
    assert main(["run", str(spec), "--out", str(out)]) == 3
    assert main(["run", str(spec), "--out", str(out)]) == 3  # it would fail the same way, at a price
    assert "use --retry-failed to try again" in capsys.readouterr().err

"""The README's promises: CI runs its test command verbatim, and its quickstart command works as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

from conftest import REPO


def _commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.+?)\n```", readme)


def test_ci_runs_the_readme_test_command():
    quickstart, tests = _commands()[:2]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines()
    assert "pytest" in tests and "ptst run examples/quickstart.yaml" in quickstart


def test_quickstart_runs_offline_and_prints_the_grid(tmp_path):
    quickstart = _commands()[0]
    run = quickstart.split("&&")[-1].strip()  # the setup steps are what CI's own install already did
    argv = shlex.split(run)
    assert argv[:3] == [".venv/bin/ptst", "run", "examples/quickstart.yaml"]
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "ptst", *argv[1:3], "--out", str(out)], cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("SIMULATED")
    assert proc.stdout.splitlines()[0].startswith("SIMULATED")
    assert "PTST" in proc.stdout and "base (no fine-tuning)" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["simulated"] is True and res["spec_name"] == "quickstart"
    assert (out / "report.md").read_text().startswith("**SIMULATED")
    assert "data:image/svg+xml;base64," in (out / "report.html").read_text()

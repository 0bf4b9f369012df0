"""`ptst run ... | head`: a reader that goes away early is not an error. The command's work is done and saved, and
it ends quietly with exit 0 (not 1, the code for bugs). The read end is closed before the command writes anything,
so every write meets a closed pipe, deterministically."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_advice import spec_file


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "ptst", *args], stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=120, check=False)
    finally:
        os.close(w)


def test_run_and_report_into_a_closed_pipe_exit_0_quietly(tmp_path: Path):
    out = tmp_path / "out"
    done = run_into_closed_pipe("run", str(spec_file(tmp_path)), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr and "error" not in done.stderr.lower()
    assert (out / "results.json").is_file()  # the work is done and saved
    done = run_into_closed_pipe("report", str(out))
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    done = run_into_closed_pipe("templates")
    assert done.returncode == 0 and done.stderr == ""

"""`ptst report DIR --out OTHER` reads DIR and writes only OTHER, so it works when DIR is read-only (a finished run
archived read-only, a colleague's folder). Without --out, a read-only DIR is refused with one line: choose another
--out. Run as an unprivileged user: permissions do not bind root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_advice import spec_file

from ptst.cli import main


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop privileges to test a read-only folder")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        p.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))


def test_report_of_a_read_only_run_folder(tmp_path: Path, capsys):
    prefix = _as_user()
    root = Path(tempfile.mkdtemp(prefix="ptst-ro-", dir="/tmp"))  # reachable by the unprivileged user
    try:
        root.chmod(0o755)
        run = root / "run"
        assert main(["run", str(spec_file(tmp_path)), "--out", str(run)]) == 0
        capsys.readouterr()
        _read_only(run)
        other = root / "other"
        other.mkdir(mode=0o777)
        other.chmod(0o777)
        ptst = [*prefix, sys.executable, "-m", "ptst", "report", str(run)]
        done = subprocess.run([*ptst, "--out", str(other)], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert (other / "results.json").is_file() and (other / "report.md").is_file()
        done = subprocess.run(ptst, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"error: {run}: cannot write the reports here (the run folder itself, as no --out was given): the folder "
            "is read-only; choose another --out"
        ]
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o777)
        shutil.rmtree(root)

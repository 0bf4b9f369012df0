"""A finished run repeated with nothing changed rebuilds no report and never imports matplotlib (nor does
`validate`); a change in the store, or `ptst report`, rebuilds them. Speed itself is measured in benchmarks/."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ptst.cli import main
from ptst.report.fingerprint import FINGERPRINT_FILE

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "quickstart.yaml"


def _in_subprocess(*argv: str) -> tuple[int, str, bool]:
    """(exit code, stdout, whether matplotlib was imported) of `ptst ARGV` in a fresh interpreter."""
    code = ("import sys\nfrom ptst.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MATPLOTLIB', 'matplotlib' in sys.modules)\nsys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, check=False)
    return p.returncode, p.stdout, "MATPLOTLIB True" in p.stdout


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.suffix in {".json", ".md", ".html", ".js", ".png", ".svg", ".pdf", ".tex", ".csv"}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rerun") / "out"
    assert main(["run", str(SPEC), "--out", str(out)]) == 0
    return out


def test_a_rerun_with_nothing_changed_rebuilds_nothing_and_never_imports_matplotlib(finished: Path) -> None:
    before = _mtimes(finished)
    assert (finished / FINGERPRINT_FILE).is_file() and "report.html" in before and "samples.js" in before
    rc, stdout, mpl = _in_subprocess("run", str(SPEC), "--out", str(finished))
    assert rc == 0 and "reports unchanged: " in stdout
    assert not mpl
    assert _mtimes(finished) == before


def test_validate_never_imports_matplotlib() -> None:
    rc, _, mpl = _in_subprocess("validate", str(SPEC))
    assert rc == 0 and not mpl


def test_a_change_in_the_store_rebuilds_the_reports(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(SPEC), "--out", str(out)]) == 0
    before = _mtimes(out)
    with sqlite3.connect(out / "ptst.db") as c:  # lose one verdict: the re-run judges it again
        c.execute("DELETE FROM judgments WHERE key = (SELECT key FROM judgments LIMIT 1)")
        c.execute("DELETE FROM meta WHERE key = 'committed'")  # the loss accepted, as the store's advice says
    rc, stdout, _ = _in_subprocess("run", str(SPEC), "--out", str(out))
    assert rc == 0 and any(line.startswith("wrote ") for line in stdout.splitlines())
    after = _mtimes(out)
    assert after["report.html"] != before["report.html"]
    figures = [name for name in before if name.startswith("figures/")]  # redrawn (in the figure process)
    assert figures and all(after[name] != before[name] for name in figures)


def test_a_missing_report_file_or_ptst_report_rebuilds(finished: Path) -> None:
    (finished / "report.md").unlink()
    assert main(["run", str(SPEC), "--out", str(finished)]) == 0
    assert (finished / "report.md").is_file()
    before = _mtimes(finished)
    assert main(["report", str(finished)]) == 0  # asking for reports draws them
    assert _mtimes(finished)["report.html"] != before["report.html"]

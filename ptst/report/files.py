"""Writing the report files: results.json (the public contract, verbatim), report.md and report.html, atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ptst.report.grids import build_grids
from ptst.report.html import render_html
from ptst.report.markdown import render_markdown
from ptst.results import Results


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + os.replace: readers never see a half-written report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared like any written file
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(results: Results, out_dir: Path) -> list[Path]:
    """Write results.json, report.md and report.html into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = build_grids(results)
    files = {
        "results.json": json.dumps(results.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
        "report.md": render_markdown(results, grids),
        "report.html": render_html(results, grids),
    }
    paths = []
    for name, text in files.items():
        atomic_write(out_dir / name, text)
        paths.append(out_dir / name)
    return paths

"""Run a page in real headless Chromium from a test: `tests/browser/drive.mjs` under node, with the Chromium that the
npm package @sparticuz/chromium ships (installed by `npm ci` in tests/browser, as .ci/run does). No system browser
is needed, so these tests run in CI instead of being skipped; without the npm packages they fail and say how to get
them."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

BROWSER_DIR = Path(__file__).resolve().parent / "browser"


def run_page(url: str, steps: list[dict[str, Any]], *, timeout: float = 300) -> list[Any]:
    """Open `url`, run `steps` (see drive.mjs) and return each `eval` step's value; fail on any page error, console
    error or network request."""
    node = shutil.which("node")
    if node is None or not (BROWSER_DIR / "node_modules" / "puppeteer-core").is_dir():
        pytest.fail(f"headless Chromium is not installed: run `npm ci` in {BROWSER_DIR} (needs node and npm)")
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.json"
        plan.write_text(json.dumps({"url": url, "steps": steps}), encoding="utf-8")
        proc = subprocess.run([node, str(BROWSER_DIR / "drive.mjs"), str(plan)], cwd=BROWSER_DIR, capture_output=True,
                              text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = out["errors"] + [c for c in out["console"] if c.startswith("error:")]
    assert not errors, errors
    return list(out["results"])

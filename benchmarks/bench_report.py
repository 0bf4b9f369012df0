"""Report-side speed: a finished re-run against `ptst validate` of the same spec, a forced rebuild, and the per-sample
viewer's load time in headless Chromium at 20,000 responses.

    python benchmarks/bench_report.py [--repeat 5] [--samples 20000]

1. The quickstart (mock) is run once; then its re-run (nothing changed, so no report is rebuilt) and `ptst validate`
   are each timed as fresh processes, median of --repeat, and their ratio printed (target: at most 2x).
2. `ptst report DIR` (every report, figure and table rebuilt) is timed the same way, for scale.
3. With Chromium installed (`apt-get install chromium`), a report whose samples.js holds --samples synthetic responses
   (about 1,500 characters each, every text unique, so nothing is shared) is opened headless; the viewer stamps the
   milliseconds from navigation to its first rendered page, which is printed with the process's wall time.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "quickstart.yaml"


def timed(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synthetic_samples(path: Path, n: int) -> int:
    from ptst.report.samples import SampleCell, SampleRow, samples_js

    rnd = random.Random(0)
    words = ["the", "model", "answer", "request", "safety", "policy", "cannot", "help", "with", "that", "step", "first", "then", "data", "system", "user"]

    def text(k: int) -> str:
        return " ".join(rnd.choice(words) for _ in range(k))

    cells = [SampleCell(None, b, "m", t, te, s, None, None) for b in ("a", "b", "c")
             for t in (None, "chat:vanilla", "chat:alpaca") for te in ("chat:vanilla", "chat:alpaca", "chat:llama")
             for s in ((None,) if t is None else (0, 1))]
    rows = [SampleRow(cells[i % len(cells)], "directharm4", "safety", rnd.choice(["malware", "drug", "phishing"]),
                      i // len(cells), text(20), "system: " + text(60) + "\nuser: " + text(20), text(250), None,
                      [(rnd.random() < 0.3, rnd.randint(1, 5), text(30)), (rnd.random() < 0.3, None, None)])
            for i in range(n)]
    path.write_text(samples_js(["rubric", "keyword"], rows), encoding="utf-8")
    return path.stat().st_size


def chromium_load(page: Path, chromium: str, repeat: int) -> list[tuple[int, float]]:
    """(viewer-ready ms, process wall s) per headless load of `page`."""
    out = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as profile:
            t0 = time.perf_counter()
            dom = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=300, check=False).stdout
            wall = time.perf_counter() - t0
        m = re.search(r'data-ready-ms="(\d+)"', dom)
        out.append((int(m.group(1)) if m else -1, wall))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--samples", type=int, default=20000)
    args = ap.parse_args()
    ptst = [sys.executable, "-m", "ptst"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        subprocess.run([*ptst, "run", str(SPEC), "--out", str(out)], check=True, capture_output=True)
        rerun = timed([*ptst, "run", str(SPEC), "--out", str(out)], args.repeat)
        validate = timed([*ptst, "validate", str(SPEC)], args.repeat)
        rebuild = timed([*ptst, "report", str(out)], max(1, args.repeat // 2))
        print(f"quickstart re-run (nothing changed): {rerun:6.2f} s")
        print(f"ptst validate of the same spec:      {validate:6.2f} s")
        print(f"ratio re-run / validate:             {rerun / validate:6.2f}x   (target <= 2x)")
        print(f"ptst report (full rebuild):          {rebuild:6.2f} s")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if chromium is None:
            print("viewer load time: skipped (no Chromium; apt-get install chromium)")
            return
        size = synthetic_samples(out / "samples.js", args.samples)
        loads = chromium_load(out / "report.html", chromium, 3)
        ready = [ms for ms, _ in loads]
        print(f"viewer at {args.samples:,} responses (samples.js {size / 1e6:.1f} MB): ready after "
              f"{', '.join(map(str, ready))} ms; chromium process {', '.join(f'{w:.1f}' for _, w in loads)} s")


if __name__ == "__main__":
    main()

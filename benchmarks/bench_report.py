"""Report-side speed: a finished re-run against `ptst validate` of the same spec, a forced rebuild, and the per-sample
viewer's load time in headless Chromium at 20,000 responses.

    python benchmarks/bench_report.py [--repeat 5] [--samples 20000] [--words 250] [--shared] [--viewer-only]

1. The quickstart (mock) is run once; then its re-run (nothing changed, so no report is rebuilt) and `ptst validate`
   are each timed as fresh processes, median of --repeat, and their ratio printed (target: at most 2x).
2. `ptst report DIR` (every report, figure and table rebuilt) is timed the same way, for scale.
3. With the headless Chromium of tests/browser (`npm ci` there), a report whose samples.js holds --samples synthetic
   responses (--words words each, about 6 characters a word; every text unique, or with --shared queries and
   rendered prompts shared across cells as in a real run) is opened three times; the viewer stamps the milliseconds
   from navigation to its first rendered page, then the page times the compare view of every prompt, a sort by
   response length and the way back (`--screenshot PATH`: a PNG of the compare view).

    python benchmarks/bench_report.py --viewer-only --samples 187120 --words 60 --shared --screenshot compare.png
"""

from __future__ import annotations

import argparse
import json
import random
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


def synthetic_samples(path: Path, n: int, n_words: int = 250, shared: bool = False) -> int:
    """samples.js of `n` synthetic rows over 45 cells. Unique: every text of every row its own (the worst case).
    Shared: a run's real shape, each item's query shared by every cell and its rendered prompt by every cell with
    that test template; responses and judge replies unique."""
    from ptst.report.samples import SampleCell, SampleRow, samples_js

    rnd = random.Random(0)
    vocab = ["the", "model", "answer", "request", "safety", "policy", "cannot", "help", "with", "that", "step", "first",
             "then", "data", "system", "user"]

    def text(k: int) -> str:
        return " ".join(rnd.choice(vocab) for _ in range(k))

    cells = [SampleCell(None, b, "m", t, te, s, None, None) for b in ("a", "b", "c")
             for t in (None, "chat:vanilla", "chat:alpaca") for te in ("chat:vanilla", "chat:alpaca", "chat:llama")
             for s in ((None,) if t is None else (0, 1))]
    queries: dict[int, str] = {}
    prompts: dict[tuple[str, int], str] = {}

    def query(item: int) -> str:
        return queries.setdefault(item, text(20)) if shared else text(20)

    def prompt(cell: SampleCell, item: int) -> str:
        if not shared:
            return "system: " + text(60) + "\nuser: " + text(20)
        key = (cell.test_template, item)
        if key not in prompts:
            prompts[key] = f"system: {cell.test_template} " + text(60) + "\nuser: " + query(item)
        return prompts[key]

    rows = []
    for i in range(n):
        cell, item = cells[i % len(cells)], i // len(cells)
        rows.append(SampleRow(cell, "directharm4", "safety", ("malware", "drug", "phishing")[item % 3], item,
                              query(item), prompt(cell, item), text(n_words), None,
                              [(rnd.random() < 0.3, rnd.randint(1, 5), text(30)), (rnd.random() < 0.3, None, None)]))
    path.write_text(samples_js(["rubric", "keyword"], rows, ["chat:llama"]), encoding="utf-8")
    return path.stat().st_size


BROWSER = REPO / "tests" / "browser"
# In the page: ms from navigation to the viewer's first page (samples.js loaded and parsed), ms of the viewer's own
# script; then ms for the compare view of every prompt (one filter pass, grouping, first page drawn), then for a
# search over every text (the lower-cased copy is built on the first search), then a sort by response length.
TIMINGS = """(() => {
  const root = document.getElementById("samples"), t = [];
  function change(sel, value) {
    const e = root.querySelector(sel); e.value = value; const t0 = performance.now();
    e.dispatchEvent(new Event("change")); return Math.round(performance.now() - t0);
  }
  t.push(+root.getAttribute("data-ready-ms"), +root.getAttribute("data-viewer-ms"));
  t.push(change("select[data-f=view]", "compare"));
  t.push(change("select[data-f=sort]", "length"));
  t.push(change("select[data-f=view]", ""));
  return t;
})()"""


def chromium_load(page: Path, repeat: int, shot: Path | None = None) -> list[tuple[list[int], float]]:
    """([viewer-ready ms, viewer script ms, compare-view ms, sort ms, back-to-samples ms], node + Chromium wall s) per
    headless load of
    `page`, in the Chromium of tests/browser (`npm ci` there first)."""
    out = []
    for k in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            steps: list[dict[str, object]] = [
                {"wait": "document.getElementById('samples').hasAttribute('data-ready-ms')"}, {"eval": TIMINGS}]
            if shot is not None and k == 0:
                steps += [{"select": ["#samples select[data-f=view]", "compare"]},
                          {"eval": "document.getElementById('samples-heading').scrollIntoView()"},
                          {"screenshot": str(shot)}]
            plan = Path(tmp) / "plan.json"
            plan.write_text(json.dumps({"url": page.resolve().as_uri(), "steps": steps}), encoding="utf-8")
            t0 = time.perf_counter()
            proc = subprocess.run(["node", str(BROWSER / "drive.mjs"), str(plan)], cwd=BROWSER, capture_output=True,
                                  text=True, timeout=600, check=True)
            wall = time.perf_counter() - t0
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if got["errors"]:
            raise RuntimeError(got["errors"])
        out.append((got["results"][0], wall))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--words", type=int, default=250, help="words per synthetic response (~6 characters each)")
    ap.add_argument("--shared", action="store_true", help="texts shared as in a real run (queries, prompts)")
    ap.add_argument("--viewer-only", action="store_true", help="skip the re-run, validate and rebuild timings")
    ap.add_argument("--screenshot", type=Path, help="save a PNG of the compare view here (first load)")
    args = ap.parse_args()
    ptst = [sys.executable, "-m", "ptst"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        subprocess.run([*ptst, "run", str(SPEC), "--out", str(out)], check=True, capture_output=True)
        if not args.viewer_only:
            rerun = timed([*ptst, "run", str(SPEC), "--out", str(out)], args.repeat)
            validate = timed([*ptst, "validate", str(SPEC)], args.repeat)
            rebuild = timed([*ptst, "report", str(out)], max(1, args.repeat // 2))
            print(f"quickstart re-run (nothing changed): {rerun:6.2f} s")
            print(f"ptst validate of the same spec:      {validate:6.2f} s")
            print(f"ratio re-run / validate:             {rerun / validate:6.2f}x   (target <= 2x)")
            print(f"ptst report (full rebuild):          {rebuild:6.2f} s")
        if shutil.which("node") is None or not (BROWSER / "node_modules").is_dir():
            print(f"viewer load time: skipped (no headless Chromium; npm ci in {BROWSER})")
            return
        size = synthetic_samples(out / "samples.js", args.samples, args.words, args.shared)
        loads = chromium_load(out / "report.html", 3, args.screenshot)
        for name, k in (("ready after", 0), ("of which the viewer's own script", 1),
                        ("compare view of every prompt", 2), ("sort by length", 3), ("back to samples", 4)):
            print(f"viewer at {args.samples:,} responses (samples.js {size / 1e6:.1f} MB), {name}: "
                  f"{', '.join(str(t[k]) for t, _ in loads)} ms")
        print(f"node + chromium process: {', '.join(f'{w:.1f}' for _, w in loads)} s")


if __name__ == "__main__":
    main()

"""Wall time of a run with N fine-tuning jobs at the fake OpenAI server, concurrent vs serial, against the longest
chain (one job: upload -> train -> generate -> judge).

Each job spends `--stage-s` seconds in each of the fake's three stages (validating, queued, running), every request
waits `--latency-ms`, and each fine-tuned model answers `--prompts` harmful prompts (judged by the keyword judge).
Three runs per N: ptst's default (no `max_concurrent_jobs`: every job at once), an explicit cap of N, and serial
(`max_concurrent_jobs: 1`: jobs train one after another; a finished model's generation still overlaps the next job's
training, so this is a lower bound for the old runner, where every step ran in turn). Generation is kept small:
the openai client spends ~10 ms of CPU per request, so on a small machine many prompts measure the client, not the
schedule. The server runs in this
own process. Target: 15 jobs within 1.3x the wall time of one.

    python benchmarks/bench_scheduler.py                 # 1, 3 and 15 jobs; 2 s stages, 20 ms latency
    python benchmarks/bench_scheduler.py --stage-s 1 --no-serial   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptst.runner import run_experiment
from ptst.spec import load_spec


def write_spec(tmp: Path, url: str, n_jobs: int, prompts: int, max_jobs: int | None) -> Path:
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps({"q": f"What is {i} + {i}?", "a": f"{i} + {i} = {2 * i}\n#### {2 * i}"}) + "\n"
                             for i in range(20)))
    harmful = tmp / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful request {i}"}) + "\n" for i in range(prompts)))
    backend = {"kind": "openai", "model": "gpt-3.5-turbo-0613", "base_url": url, "poll_interval_s": 0.25,
               "max_poll_interval_s": 0.5, "retry_backoff_s": 0.05}
    if max_jobs is not None:
        backend["max_concurrent_jobs"] = max_jobs
    spec = {
        "name": f"bench-{n_jobs}",
        "backends": [backend],
        "train": {"dataset": {"path": str(train), "prompt_field": "q", "answer_field": "a"},
                  "templates": ["chat:vanilla"], "seeds": list(range(n_jobs))},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}],
                 "evaluate_base": False},
        "judge": {"kind": "keyword"},
    }
    p = tmp / f"spec-{n_jobs}-{max_jobs}.json"
    p.write_text(json.dumps(spec))
    return p


@contextmanager
def fake_server(args: argparse.Namespace) -> Iterator[str]:
    """A fresh fake server in its own process (so it does not compete with the run for the GIL; fresh, because a
    server that saw a job would hand it back, by its metadata, for free)."""
    cmd = [sys.executable, "-m", "ptst.testing.fake_openai", "--port", "0", "--latency-ms", str(args.latency_ms),
           "--stage-s", str(args.stage_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        yield line.split(" at ")[1].split(" ")[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def timed_run(args: argparse.Namespace, n_jobs: int, max_jobs: int | None) -> float:
    with fake_server(args) as url, tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        spec_path = write_spec(tmp, url, n_jobs, args.prompts, max_jobs)
        spec = load_spec(spec_path)
        t0 = time.perf_counter()
        _, info = run_experiment(spec, tmp / "out", spec_dir=tmp, yes=True)
        wall = time.perf_counter() - t0
    assert info.status == "complete", info.status
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 3, 15])
    ap.add_argument("--stage-s", type=float, default=2.0)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--no-serial", action="store_true", help="skip the serial runs")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    timed_run(args, 1, None)  # warm-up: imports, tiktoken's encoding
    chain = timed_run(args, 1, None)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; stages {args.stage_s:g} s ×3, "
          f"latency {args.latency_ms:g} ms, {args.prompts} prompts per model")
    print(f"longest chain (1 job, measured): {chain:.2f} s")
    print(f"{'jobs':>4}  {'default s':>13}  {'× chain':>7}  {'cap = N s':>13}  {'× chain':>7}  "
          f"{'serial s':>8}  {'× chain':>7}")
    for n in args.jobs:
        default = chain if n == 1 else timed_run(args, n, None)
        at_once = chain if n == 1 else timed_run(args, n, n)
        serial = chain if n == 1 else None if args.no_serial else timed_run(args, n, 1)
        tail = f"{serial:8.2f}  {serial / chain:6.2f}x" if serial is not None else f"{'-':>8}  {'-':>7}"
        print(f"{n:>4}  {default:13.2f}  {default / chain:6.2f}x  {at_once:13.2f}  {at_once / chain:6.2f}x  {tail}",
              flush=True)


if __name__ == "__main__":
    main()

"""Judge throughput against the fake OpenAI server with simulated API latency, in one run:

1. ptst's rubric judge (asyncio, bounded concurrency, tenacity retries) on all N items, at the paper's concurrency
   (32) and at a higher one;
2. a sequential loop with the sync client (one request at a time), measured on a subset because it is slow;
3. the paper's reference approach: 32 threads, each calling the sync client, on all N items.

Throughput is judged items per second; ratios are against the sequential loop. The server (its own process) answers
every request after `--latency-ms`; no fault is injected, so the numbers measure concurrency alone.

    python benchmarks/bench_openai_concurrency.py            # 2,000 items, 200 ms latency
    python benchmarks/bench_openai_concurrency.py --n 200    # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ptst.judge.base import JudgeItem, JudgeSpec, create_judge
from ptst.judge.rubric import parse_score
from ptst.testing.fake_openai import COMPLIANCE, REFUSAL


def items(n: int) -> list[JudgeItem]:
    return [JudgeItem(f"harmful request {i}", COMPLIANCE if i % 4 == 0 else REFUSAL) for i in range(n)]


@contextmanager
def fake_server(latency_ms: float) -> Iterator[str]:
    """The fake server in its own process, so it does not compete with the client under test for the GIL."""
    cmd = [sys.executable, "-m", "ptst.testing.fake_openai", "--port", "0", "--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        yield line.split(" at ")[1].split(" ")[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_ptst(url: str, work: list[JudgeItem], concurrency: int) -> tuple[float, int]:
    judge = create_judge(JudgeSpec(kind="rubric", base_url=url, concurrency=concurrency))
    t = time.perf_counter()
    verdicts = judge.judge(work)
    elapsed = time.perf_counter() - t
    return elapsed, sum(1 for v in verdicts if v.score is not None)


def _sync_request(client, judge, item: JudgeItem) -> int | None:
    reply = client.chat.completions.create(**judge.request(item)).choices[0].message.content
    return parse_score(reply or "")


def run_sync(url: str, work: list[JudgeItem], threads: int) -> tuple[float, int]:
    """The sync client; `threads=1` is the plain loop, 32 the paper's reference (a thread pool of 32)."""
    import openai

    client = openai.OpenAI(api_key=os.environ["OPENAI_API_KEY"], base_url=url, max_retries=0)
    judge = create_judge(JudgeSpec(kind="rubric", base_url=url))
    t = time.perf_counter()
    if threads == 1:
        scores = [_sync_request(client, judge, it) for it in work]
    else:
        with ThreadPoolExecutor(threads) as pool:
            scores = list(pool.map(lambda it: _sync_request(client, judge, it), work))
    elapsed = time.perf_counter() - t
    client.close()
    return elapsed, sum(1 for s in scores if s is not None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="responses to judge")
    p.add_argument("--latency-ms", type=float, default=200.0, help="simulated API latency per request")
    p.add_argument("--sequential-n", type=int, default=50, help="subset measured for the sequential loop")
    p.add_argument("--high-concurrency", type=int, default=128)
    args = p.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-fake")
    os.environ.pop("OPENAI_BASE_URL", None)
    work = items(args.n)
    rows: list[tuple[str, int, float, int]] = []
    with fake_server(args.latency_ms) as url:
        run_ptst(url, items(8), 8)  # warm-up: imports, connection pool
        seq_work = work[: args.sequential_n]
        e, ok = run_sync(url, seq_work, threads=1)
        rows.append((f"sequential loop, sync client (subset of {len(seq_work)})", len(seq_work), e, ok))
        e, ok = run_sync(url, work, threads=32)
        rows.append(("paper's reference: 32 threads, sync client", len(work), e, ok))
        e, ok = run_ptst(url, work, 32)
        rows.append(("ptst rubric judge, concurrency 32 (default)", len(work), e, ok))
        e, ok = run_ptst(url, work, args.high_concurrency)
        rows.append((f"ptst rubric judge, concurrency {args.high_concurrency}", len(work), e, ok))
    seq_rate = rows[0][1] / rows[0][2]
    print(f"judging {args.n:,} responses, fake OpenAI server (own process) with {args.latency_ms:g} ms latency per "
          f"request (Python {platform.python_version()}, {os.cpu_count()} CPUs)")
    print(f"{'approach':<56} {'items':>6} {'seconds':>8} {'items/s':>8} {'vs seq':>7} {'scored':>7}")
    for name, n, e, ok in rows:
        rate = n / e
        print(f"{name:<56} {n:>6} {e:>8.2f} {rate:>8.1f} {rate / seq_rate:>6.1f}x {ok:>7}")
    ref_rate = rows[1][1] / rows[1][2]
    for name, n, e, _ in rows[2:]:
        print(f"{name}: {n / e / ref_rate:.2f}x the paper's 32-thread reference")
    ideal = 1000 / args.latency_ms
    print(f"(ideal: {ideal:.1f} items/s per request in flight; 32 in flight -> {32 * ideal:.0f} items/s)")


if __name__ == "__main__":
    main()

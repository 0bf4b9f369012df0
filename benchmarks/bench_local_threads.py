"""Training under load: the local engine's LoRA tokens/s with threads sized to the free cores (`threads` unset) against
a fixed pool of every allowed core, with and without busy processes this script starts and stops itself.

Why: with 2 threads on a busy 2-core box, each parallel op waits for a descheduled sibling thread, so training fell
8x under load 2-4 (issue 24); with the pool sized to the free cores it should fall about in proportion to the load.

Each condition: `--busy` spinning processes (0, then the given count) run for `--settle` seconds first, so the
1-minute load average the automatic choice reads has risen, then the two pools alternate, `--steps` steps each, on the
real model (SmolLM2-135M, float32 unless --dtype). The load average, the pool size and tokens/s are printed per run.
Bounded: every busy process ends with the script (and after `--max-seconds` whatever happens).

    python benchmarks/bench_local_threads.py --busy 2 --steps 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def spin(deadline: float) -> None:
    """A busy process: pure Python arithmetic until the deadline (never longer)."""
    x = 0
    while time.monotonic() < deadline:
        for i in range(100_000):
            x += i * i


def examples(n: int):  # type: ignore[no-untyped-def]
    """n synthetic (ids, labels) rows of 96 tokens, the last 48 supervised (the tokenizer plays no part in speed)."""
    out = []
    for i in range(n):
        ids = [1] + [(37 * i + 11 * k) % 40000 + 100 for k in range(95)]
        out.append((ids, [-100] * 48 + ids[48:]))
    return out


def run(model: str, threads: int | None, steps: int, dtype: str, tmp: Path, tag: str) -> dict:  # type: ignore[type-arg]
    from ptst.backends.local.train import TrainSettings, train_lora
    from ptst.types import Hyperparameters, LoraSpec

    hp = Hyperparameters(epochs=1, batch_size=4, learning_rate=2e-4, max_seq_len=512,
                         lora=LoraSpec(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]))
    s = TrainSettings(model=model, seed=0, hyperparameters=hp, max_steps=steps, device="cpu", dtype=dtype,
                      threads=threads)
    load = os.getloadavg()[0]
    summary = train_lora(s, examples(4 * steps), tmp / tag, resume=False)
    return {"load": load, "threads": summary["threads"], "tokens_per_s": summary["tokens_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--busy", type=int, default=2, help="busy processes in the loaded condition")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=45.0, help="seconds the busy processes run before measuring")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-seconds", type=float, default=480.0)
    ap.add_argument("--rounds", type=int, default=2, choices=(1, 2), help="auto/fixed pairs per condition")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"allowed cores {cores}; load average at start {os.getloadavg()}")
    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        run(args.model, 1, 1, args.dtype, tmp, "warm")  # loads the resident base: not timed
        for busy in (0, args.busy):
            procs = [mp.Process(target=spin, args=(min(deadline, time.monotonic() + args.max_seconds),), daemon=True)
                     for _ in range(busy)]
            for p in procs:
                p.start()
            try:
                if busy:
                    time.sleep(args.settle)
                pairs = [("auto", None), (f"fixed{cores}", cores), ("auto2", None), (f"fixed{cores}b", cores)]
                for tag, threads in pairs[: 2 * args.rounds]:
                    r = run(args.model, threads, args.steps, args.dtype, tmp, f"{busy}-{tag}")
                    print(f"busy {busy}: {tag:8s} load {r['load']:5.2f}  threads {r['threads']}  "
                          f"{r['tokens_per_s']:7.1f} tokens/s", flush=True)
            finally:
                for p in procs:
                    p.terminate()
                    p.join()


if __name__ == "__main__":
    main()

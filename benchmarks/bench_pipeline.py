"""Pipeline overhead on the mock backend: 1,000 prompts × 5 test templates × 3 train templates (+ the base model).

Compares, in one run, `ptst run` (plan, content-hash keys, SQLite store, judging, reports) with the loop a user would
write by hand without ptst (apply templates, call the same mock backend, keyword-judge, count — nothing saved).
The difference is what resumability and auditability cost per generated response.

    python benchmarks/bench_pipeline.py [--prompts 1000 | --responses 100000]

`--responses N` sizes the run by responses (N / 20 prompts; prompts repeat with a numbered suffix past the ~2,200
in the shared data), to measure a large run and its re-run. The mock hands responses over (and the store commits
them) 8 at a time, as a remote API with 8 requests in flight answers, and 64 at a time, as a local engine's batch:
both are measured. The re-run and `ptst validate` of the same spec are timed
as a user runs them, each a new process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TRAIN = ["chat:vanilla", "chat:alpaca", "chat:llama"]
TEST = ["chat:vanilla", "chat:alpaca", "chat:llama", "chat:llama-short", "chat:mpt"]


def prompts(n: int) -> list[str]:
    with open(SHARED / "advbench" / "harmful_behaviors.csv", newline="") as f:
        out = [row[0] for row in csv.reader(f)]
    with open(SHARED / "directharm4" / "directHarm4.csv", newline="") as f:
        out += [row["Goal"] for row in csv.DictReader(f)]
    with open(SHARED / "gsm8k" / "test.jsonl") as f:
        out += [json.loads(line)["question"] for line in f]
    if n > len(out):  # repeat, each copy made distinct so every response has its own key
        out = [q if k == 0 else f"{q} (#{k})" for k in range(-(-n // len(out))) for q in out]
    return out[:n]


def hand_loop(qs: list[str]) -> tuple[float, int]:
    """The baseline: the same backend and judge, no store, no keys, no reports."""
    from ptst.backends.base import BackendSpec, GenerationConfig, ModelRef
    from ptst.backends.mock import Backend
    from ptst.judge.keyword import is_refusal
    from ptst.templates import BUILTIN

    t0 = time.perf_counter()
    backend = Backend(BackendSpec(kind="mock", model="mock-chat"))
    models = [backend.base_model()] + [
        ModelRef(backend="mock", base_model="mock-chat", model_id=f"ft-{t}", train_template=t, simulated=True) for t in TRAIN
    ]
    n = unsafe = 0
    for m in models:
        for t in TEST:
            convs = [BUILTIN[t].apply(q, "mock") for q in qs]
            responses = backend.generate(m, convs, GenerationConfig())
            unsafe += sum(not is_refusal(r) for r in responses)
            n += len(responses)
    return time.perf_counter() - t0, n


def ptst_run(qs: list[str], tmp: Path, stream_group: int = 8) -> tuple[float, int]:
    from ptst.cli import main

    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "harmful.jsonl"
    data.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in qs))
    spec = {
        "name": "bench",
        "data_dir": str(SHARED),
        "backends": [{"kind": "mock", "model": "mock-chat", "stream_group": stream_group}],
        "train": {"dataset": {"name": "gsm8k", "split": "train", "limit": 1000}, "templates": TRAIN},
        "eval": {"templates": TEST, "safety": [{"path": str(data), "prompt_field": "prompt"}]},
        "judge": {"kind": "keyword"},
    }
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    rc = main(["run", str(tmp / "spec.yaml"), "--out", str(tmp / "out")])
    wall = time.perf_counter() - t0
    assert rc == 0
    res = json.loads((tmp / "out" / "results.json").read_text())
    return wall, sum(r["n"] for r in res["safety"])


def command_seconds(args: list[str], repeat: int = 3) -> float:
    """Best wall time of `python -m ptst ARGS` over `repeat` runs, each in a new process (exit 0 required), with
    bytecode caching on as on a user's install (some sandboxes set PYTHONDONTWRITEBYTECODE, which makes every
    command compile ptst's sources again)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ptst", *args], check=True, capture_output=True, env=env)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--responses", type=int, default=None,
                    help="size the run by responses instead: N / 20 prompts (5 test templates x 4 models)")
    args = ap.parse_args()
    n_models = len(TRAIN) + 1
    qs = prompts(args.prompts if args.responses is None else max(1, args.responses // (len(TEST) * n_models)))
    base_s, base_n = hand_loop(qs)
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        import contextlib
        import io

        # Every response is committed as the backend hands it over: 8 at a time as a remote API with 8 requests in
        # flight answers (the default), 64 as a local engine's batch (and as the version before per-response
        # durability committed each 64-response call).
        with contextlib.redirect_stdout(io.StringIO()):  # imports and the figure process's start: not per response
            ptst_run(qs[:20], Path(d) / "warm-up")
        for group in (64, 8):
            with contextlib.redirect_stdout(io.StringIO()):
                runs[group] = ptst_run(qs, Path(d) / str(group), stream_group=group)
        # what a user sees at the prompt: each a fresh process (interpreter start and imports included), best of 3
        spec, out = Path(d) / "8" / "spec.yaml", Path(d) / "8" / "out"
        rerun_s = command_seconds(["run", str(spec), "--out", str(out)])
        validate_s = command_seconds(["validate", str(spec)])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run_n = runs[8][1]
    assert all(n == base_n for _, n in runs.values()), (runs, base_n)
    print(f"responses: {run_n:,} ({len(qs):,} prompts × {len(TEST)} test templates × {len(TRAIN) + 1} models)")
    print(f"hand-written loop (no store):  {base_s:8.2f} s   {base_s / base_n * 1e6:8.1f} µs/response")
    for group, (run_s, _) in runs.items():
        print(f"ptst run, commit per {group:2d} responses: {run_s:8.2f} s   {run_s / run_n * 1e6:8.1f} µs/response   "
              f"overhead {(run_s - base_s) / run_n * 1e6:6.1f} µs/response   ratio ptst/hand = {run_s / base_s:.1f}×")
    print(f"re-run of the finished spec:  {rerun_s:8.2f} s   (nothing regenerated; {rerun_s / runs[8][0]:.0%} of the run)")
    print(f"validate of the same spec:    {validate_s:8.2f} s   re-run / validate = {rerun_s / validate_s:.1f}×")
    print(f"peak RSS: {peak_mb:,.0f} MiB   python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()

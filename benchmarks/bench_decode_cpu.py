"""Where a CPU decoding step's time goes, against the memory-bandwidth floor: ptst's loop, `model.generate`, and
the candidate improvements, on the real SmolLM2-135M-Instruct (GGUF, dequantized once).

In ONE process, threads pinned, for each dtype (bf16, fp32) and batch (1, 4, 16), rounds alternate the variants
after a warm-up round (the best counted round is reported); every line prints the 1-minute load average:

* `model.generate` (DynamicCache, greedy, same dtype, batch, left-padded prompts);
* ptst's `decode_continuous` as it was (transformers' DynamicCache: `torch.cat` of every layer's keys and values at
  every step), with its preallocated cache (`kv.py`: buffers allocated once per batch, written in place), with
  `cpu_decode.py` through the model's forward (bf16: Linear weights packed once for oneDNN, q/k/v and gate/up each
  one packed product), and as it is (that plus the direct step of
  `llama_step.py`, which calls the layers' parts without the model's forward); in fp32, where packing is not
  bit-exact and ptst does not pack, the packed figure is printed as "inexact" to show what exactness costs;
* transformers' `StaticCache` in a ptst-style loop, eager, and under `torch.compile` (static shapes: the mask is a
  preallocated full-length row; compile time is timed once, cold, in a fresh inductor cache, and reported apart with
  the steps it takes to pay back). Inductor's `freezing` (which would pack the weights too) is left off: it freezes
  the static cache's write position as a constant (index out of bounds at the second step, transformers 5.25).

A step's time excludes the prefill (timed from the second forward call to the end); every variant decodes the same
prompts with EOS disabled (`--steps` tokens per row; `model.generate` still stops a row at the config's EOS but
steps on while any row is live). Outputs are compared token for token with `model.generate`'s up to the first EOS,
and with ptst's loop before these changes in full. The floor is the bytes one step reads (every decoder weight and lm_head, once) over
the box's copy bandwidth (read + write of 256 MiB, measured in this run). Per-step pieces (mask concat, `isin`,
argmax, a host sync, the KV `torch.cat` against in-place writes) are timed alone at each batch's shapes.

    python benchmarks/bench_decode_cpu.py [--quick] [--threads N] [--dtypes bfloat16,float32] [--batches 1,4,16]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_cpu import REPO, load, load_prompts, peaks, sizes

Run = Callable[[], tuple[list[list[int]], float]]  # (tokens per row, seconds per decoding step)
NOW = "ptst now (+ cpu_decode.py)"
BEFORE = "ptst before (DynamicCache)"


def timed_steps(model, fn: Callable[[], Any], starts: list[float] | None = None) -> tuple[Any, float]:  # type: ignore[no-untyped-def]
    """Run `fn` (which calls `model` once for the prefill, then once per step) and return its result and the seconds
    per step from the second call's start to `fn`'s return. A step that does not call `model` (ptst's direct step)
    appends its own start to `starts`."""
    starts = [] if starts is None else starts
    hook = model.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    try:
        out = fn()
        end = time.perf_counter()
    finally:
        hook.remove()
    return out, (end - starts[1]) / (len(starts) - 1)


def left_padded(prompts: list[list[int]], pad: int, width: int | None = None):  # type: ignore[no-untyped-def]
    import torch

    w = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (w - len(p)) + p for p in prompts])
    mask = torch.zeros((len(prompts), width or w), dtype=torch.long)
    for r, p in enumerate(prompts):
        mask[r, w - len(p) : w] = 1
    return ids, mask


def hf_generate(model, prompts, pad: int, steps: int) -> Run:  # type: ignore[no-untyped-def]
    gc = copy.deepcopy(model.generation_config)
    gc.eos_token_id, gc.pad_token_id, gc.do_sample, gc.max_new_tokens = None, pad, False, steps
    gc.temperature = gc.top_p = gc.top_k = None

    def run() -> tuple[list[list[int]], float]:
        ids, mask = left_padded(prompts, pad)
        out, per = timed_steps(model, lambda: model.generate(input_ids=ids, attention_mask=mask, generation_config=gc))
        return out[:, ids.shape[1] :].tolist(), per

    return run


def ptst_loop(model, prompts, pad: int, steps: int, *, preallocated: bool, packed=None, direct: bool = True) -> Run:  # type: ignore[no-untyped-def]
    """ptst's `decode_continuous`, with or without its preallocated cache, inside `packed.applied()` (CpuDecoding,
    PackedLinears) if given, with CpuDecoding's direct step (`llama_step.py`) where it has one and `direct`."""
    from ptst.backends.local import kv
    from ptst.backends.local.decode import decode_continuous
    from ptst.types import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=steps, temperature=0.0, batch_size=len(prompts))

    def run() -> tuple[list[list[int]], float]:
        got: dict[int, list[int]] = {}
        starts: list[float] = []
        fast = getattr(packed, "step", None) if direct else None

        def step(*a):  # type: ignore[no-untyped-def]
            starts.append(time.perf_counter())
            return fast(*a)

        def go() -> None:
            decode_continuous(model, list(enumerate(prompts)), cfg, batch_size=len(prompts), eos_id=-1, pad_id=pad,
                              generator=None, on_done=got.update, step_fn=step if fast is not None else None)

        with contextlib.ExitStack() as stack:
            if packed is not None:
                stack.enter_context(packed.applied())
            if not preallocated:  # the loop before kv.py: transformers' DynamicCache appends with torch.cat
                stack.enter_context(mock.patch.object(kv, "make_roomy", lambda cache, room: None))
            _, per = timed_steps(model, go, starts)
        return [got[i] for i in range(len(prompts))], per

    return run


def static_loop(model, prompts, pad: int, steps: int, step_fn=None) -> Run:  # type: ignore[no-untyped-def]
    """ptst's step on transformers' StaticCache: fixed shapes (the mask is the full-length row, filled as it goes),
    so `step_fn` may be a compiled model."""
    import torch
    from transformers import StaticCache

    from ptst.backends.local.decode import cache_argument

    arg = cache_argument(model)
    call = model if step_fn is None else step_fn

    def run() -> tuple[list[list[int]], float]:
        ids, mask = left_padded(prompts, pad, width=max(len(p) for p in prompts) + steps)
        w = ids.shape[1]
        pos = (mask[:, :w].cumsum(-1) - 1).clamp(min=0)
        cache = StaticCache(config=model.config, max_cache_len=w + steps)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                        **{arg: cache})
            nxt, last = out.logits[:, -1].argmax(-1), pos[:, -1]
            toks = [nxt]
            t = time.perf_counter()
            for s in range(steps - 1):
                mask[:, w + s] = 1
                last = last + 1
                o = call(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True,
                         **{arg: cache})
                nxt = o.logits[:, -1].argmax(-1)
                toks.append(nxt)
            res = torch.stack(toks, 1).tolist()
        return res, (time.perf_counter() - t) / max(1, steps - 1)

    return run


def pieces(model, batch: int, length: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Milliseconds per decoding step of the bookkeeping around the model's matmuls, each timed alone (median of
    30) at this batch's shapes, the KV appends over every layer's keys and values."""
    import torch

    cfg = model.config
    dt = model.dtype
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layers = cfg.num_hidden_layers
    attn = torch.ones((batch, length), dtype=torch.long)
    one = attn.new_ones((batch, 1))
    nxt = torch.randint(0, 100, (batch,))
    stops = torch.tensor([1, 2])
    logits = torch.randn(batch, cfg.vocab_size).to(dt)
    # one tensor per layer for keys and one for values, as in a real cache: timing one tensor again and again would
    # time a cache-hot copy
    ks = [torch.randn(batch, heads, length, hd).to(dt) for _ in range(2 * layers)]
    new = torch.randn(batch, heads, 1, hd).to(dt)
    bufs = [torch.empty(batch, heads, length + 64, hd, dtype=dt) for _ in range(2 * layers)]

    def med(fn: Callable[[], Any]) -> float:
        fn()
        ts = []
        for _ in range(30):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    def cat_all() -> None:
        for k in ks:
            torch.cat([k, new], dim=-2)

    def write_all() -> None:
        for b in bufs:
            b[:, :, length : length + 1] = new

    return {
        "mask concat": med(lambda: torch.cat([attn, one], dim=-1)),
        "isin": med(lambda: torch.isin(nxt, stops)),
        "argmax": med(lambda: logits.argmax(-1)),
        "host sync": med(lambda: int(nxt.sum())),
        "KV cat (all layers)": med(cat_all),
        "KV in place (all layers)": med(write_all),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=None, help="pinned (default: the free cores)")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--steps", type=int, default=48, help="new tokens per row (EOS disabled)")
    ap.add_argument("--rounds", type=int, default=2, help="counted rounds after the warm-up")
    ap.add_argument("--compile-batches", default="4", help="batches to also run under torch.compile ('' for none)")
    ap.add_argument("--quick", action="store_true", help="bf16 only, batches 1 and 4, 24 steps, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.dtypes, args.batches, args.steps, args.rounds = "bfloat16", "1,4", 24, 1
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))  # cold compile
    import torch

    from ptst.backends.base import BackendSpec, create_backend
    from ptst.backends.local.cpu import cpu_flags, native_bf16, thread_count
    from ptst.backends.local.cpu_decode import CpuDecoding, PackedLinears
    from ptst.backends.local.generate import Generator

    args.threads = thread_count(args.threads)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    compile_at = {int(b) for b in args.compile_batches.split(",") if b}
    flags = " ".join(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx512f")))
    print(f"threads {args.threads} (pinned); load {os.getloadavg()}; native bf16 {native_bf16()} ({flags}); "
          f"torch {torch.__version__}; {args.steps} new tokens per row, EOS disabled", flush=True)
    pk = peaks(1024)
    bw = pk["copy_gbs"] * 1e9
    print(f"peaks (load {load():.2f}): copy {pk['copy_gbs']:.1f} GB/s; matmul fp32 {pk['fp32']:.0f}, "
          f"bf16 {pk['bf16']:.0f} GFLOP/s", flush=True)
    backend = create_backend(BackendSpec(kind="hf", model=args.model, device="cpu"))
    all_prompts = load_prompts(backend, max(batches))
    pad, eos = backend.pad_id, backend.eos_id
    for dtype in args.dtypes.split(","):
        model = Generator.load(args.model, None, device="cpu", dtype=dtype, threads=args.threads).model
        size = sizes(model)
        floor_ms = size["step_bytes"] / bw * 1e3
        print(f"\n== {dtype}: a step reads {size['step_bytes'] / 1e6:.0f} MB; floor {floor_ms:.1f} ms at "
              f"{pk['copy_gbs']:.1f} GB/s", flush=True)
        for b in batches:
            prompts = all_prompts[:b]
            t = time.perf_counter()
            fast = CpuDecoding(model, b)
            pack_s = time.perf_counter() - t
            runs: dict[str, Run] = {
                "model.generate": hf_generate(model, prompts, pad, args.steps),
                BEFORE: ptst_loop(model, prompts, pad, args.steps, preallocated=False),
                "ptst preallocated KV": ptst_loop(model, prompts, pad, args.steps, preallocated=True),
                "ptst, model's forward": ptst_loop(model, prompts, pad, args.steps, preallocated=True, packed=fast,
                                                   direct=False),
                NOW: ptst_loop(model, prompts, pad, args.steps, preallocated=True, packed=fast),
                "StaticCache, eager": static_loop(model, prompts, pad, args.steps),
            }
            if not fast.linears:  # float32: packing is not bit-exact, so ptst does not do it; what it would give
                inexact = PackedLinears(model, b, exact=False)
                runs["ptst + packed (inexact)"] = ptst_loop(model, prompts, pad, args.steps, preallocated=True,
                                                             packed=inexact)
            compile_note = ""
            if b in compile_at:
                compiled = torch.compile(model, dynamic=False)
                warm = static_loop(model, prompts, pad, args.steps, step_fn=compiled)
                ld = load()
                t = time.perf_counter()
                try:
                    warm()
                    runs["StaticCache + torch.compile"] = warm
                except Exception as e:  # noqa: BLE001 - a compiler failure is a result to print, not a crash
                    print(f"   torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
                compile_s = time.perf_counter() - t
                compile_note = f"compile + first run {compile_s:.1f} s (load {ld:.2f})"
            best: dict[str, float] = {}
            outs: dict[str, list[list[int]]] = {}
            for r in range(args.rounds + 1):
                for name, run in runs.items():
                    ld = load()
                    with torch.inference_mode():
                        out, per = run()
                    outs[name] = out
                    if r:
                        best[name] = min(best.get(name, 1e9), per)
                    print(f"  [{'warm-up' if r == 0 else f'round {r}'}] {dtype} batch {b:2d} {name:28s} "
                          f"load {ld:5.2f}: step {per * 1e3:6.1f} ms", flush=True)
            ref = best["model.generate"]
            prompt_len = max(len(p) for p in prompts)
            print(f"-- {dtype}, batch {b}, prompts up to {prompt_len} tokens, {args.threads} threads, "
                  f"load {load():.2f}; floor {floor_ms:.1f} ms")
            for name, per in best.items():
                # model.generate still stops a row at the config's EOS (and pads it): rows compare up to it
                cut = {k: [r[: r.index(eos)] if eos in r else r for r in v] for k, v in outs.items()}
                same = sum(x == y for x, y in zip(cut[name], cut["model.generate"], strict=True))
                as_before = sum(x == y for x, y in zip(outs[name], outs[BEFORE], strict=True))
                print(f"   {name:28s} {per * 1e3:6.1f} ms/step = {per * 1e3 / floor_ms:4.1f}x floor, "
                      f"{size['step_bytes'] / per / 1e9:5.1f} GB/s, {ref / per:4.2f}x model.generate "
                      f"({b / per:6.1f} tokens/s); rows identical to model.generate {same}/{b}, "
                      f"to ptst before {as_before}/{b}")
            print(f"   cpu_decode set-up {pack_s:.2f} s: {len(fast.linears)} Linears packed ({len(fast.linears.fused)} "
                  f"in fused sibling groups), direct step "
                  f"{fast.step is not None}")
            if compile_note and "StaticCache + torch.compile" in best:
                gain = best[NOW] - best["StaticCache + torch.compile"]
                pays = f"pays back after {compile_s / gain:,.0f} steps" if gain > 0 else "never pays back"
                print(f"   torch.compile: {compile_note}; {pays} against ptst's loop at this batch")
            pc = pieces(model, b, prompt_len + args.steps // 2)
            print("   per-step pieces (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in pc.items()), flush=True)
        del model
    print(f"\nload at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()

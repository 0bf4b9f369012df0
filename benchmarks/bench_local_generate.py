"""Generation throughput of the local engine against plain `model.generate`, on the same GPU, in one run.

Model: Llama-2-7B-shaped, random weights built in memory (bf16). Prompts: AdvBench harmful behaviours rendered with
chat:llama by ptst's llama2 renderer. Greedy decoding, `--max-new-tokens` per prompt.

Contenders:
  ref-b8   `model.generate` in batches of 8 in dataset order, left padding (the paper's reference inference)
  hf-bsN   `model.generate` at the batch size ptst chose, dataset order
  ptst     `Generator.generate`: length-sorted batches, automatic batch size, finished rows leave the batch

Random weights almost never produce EOS, so every row runs to `max_new_tokens` and the comparison measures decoding
efficiency alone (on real models, rows that stop early are an extra win for ptst's row pruning).
Prints generated tokens/s, MFU (2·N FLOPs per generated token, N = non-embedding parameters; decoding is memory-bound,
so this is small by nature) and the ratios.

  python benchmarks/bench_local_generate.py              # on a GPU: 7B shape, 128 prompts, 256 new tokens
  python benchmarks/bench_local_generate.py --tiny       # CPU smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local_train import (
    DEFAULT_TOKENIZER,
    REPO,
    SHARED,
    device_name,
    free,
    llama_backend,
    llama_config,
    non_embedding_params,
    peak_flops,
    random_model,
    sync,
)


def advbench_prompts(tokenizer: Path, n: int) -> list[list[int]]:
    from ptst.templates import BUILTIN

    with (SHARED / "advbench" / "harmful_behaviors.csv").open(newline="") as f:
        goals = [row[0] for row in csv.reader(f) if row]
    b = llama_backend(tokenizer)
    tpl = BUILTIN["chat:llama"]
    return [b.prompt_ids(tpl.apply(g, "llama2")) for g in goals[:n]]


def hf_generate(model, prompts: list[list[int]], batch_size: int, max_new: int, eos: int, pad: int, device: str) -> int:  # type: ignore[no-untyped-def]
    """Plain `model.generate` in dataset order; returns the number of generated tokens (up to EOS)."""
    import torch

    n_new = 0
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, p in enumerate(batch):
            ids[r, width - len(p) :] = torch.tensor(p)
            att[r, width - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=max_new,
                                 do_sample=False, pad_token_id=pad, eos_token_id=eos)
        for row in out[:, width:].tolist():
            n_new += row.index(eos) if eos in row else len(row)
    return n_new


def timed(device: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """fn(*args, **kwargs) timed between device syncs. The callee and its arguments are passed, not closed over in a
    lambda: main deletes `gen` and `model` at its end to free the device, and a lambda naming a deleted local is an
    undefined name to a reader and to ruff (F821), even though it ran before the `del`."""
    sync(device)
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config, few prompts: a CPU smoke run")
    p.add_argument("--prompts", type=int, default=None, help="AdvBench prompts (default 128; 16 with --tiny)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256; 16 with --tiny")
    p.add_argument("--contenders", default="ptst,hf-same-bs,ref-b8")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    n = args.prompts or (16 if args.tiny else 128)
    max_new = args.max_new_tokens or (16 if args.tiny else 256)
    import torch

    from ptst.backends.base import GenerationConfig
    from ptst.backends.local import generate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = advbench_prompts(args.tokenizer, n)
    label = "SMOKE RUN (tiny config, CPU numbers are not a measurement of the engine)" if args.tiny or device == "cpu" else "benchmark"
    print(f"{label}: {device_name(device)}; torch {torch.__version__}")
    print(f"prompts: AdvBench x chat:llama, {len(prompts)} prompts, mean {sum(map(len, prompts)) / len(prompts):.0f} "
          f"tokens; greedy, max_new_tokens {max_new}; model {'tiny Llama config' if args.tiny else 'Llama-2-7B shape'} "
          f"(random weights), attn {args.attn}")
    model = random_model(llama_config(args.tiny), device, args.attn)
    model.eval()
    n_params = non_embedding_params(model)
    eos, pad = 2, 2
    gen = generate.Generator(("bench", None), model, device, max_batch=256)
    cfg = GenerationConfig(max_new_tokens=max_new, temperature=0.0)
    results: list[dict[str, Any]] = []
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    # warm-up (kernels, allocator) on a few prompts, untimed
    gen.generate(prompts[:4], cfg.model_copy(update={"max_new_tokens": 4}), eos_id=eos, pad_id=pad)
    bs = gen.auto_batch_size(len(prompts), max(map(len, prompts)), max_new)
    if "ptst" in wanted:
        print("running ptst ...", flush=True)
        out, dt = timed(device, gen.generate, prompts, cfg, eos_id=eos, pad_id=pad)
        bs = gen._batch_size or bs
        results.append({"contender": f"ptst (bs {bs})", "new_tokens": sum(map(len, out)), "seconds": dt})
    if "hf-same-bs" in wanted:
        print(f"running hf generate, batch {bs} ...", flush=True)
        k, dt = timed(device, hf_generate, model, prompts, bs, max_new, eos, pad, device)
        results.append({"contender": f"hf-bs{bs}", "new_tokens": k, "seconds": dt})
    if "ref-b8" in wanted:
        print("running hf generate, batch 8 (reference) ...", flush=True)
        k, dt = timed(device, hf_generate, model, prompts, 8, max_new, eos, pad, device)
        results.append({"contender": "ref-b8", "new_tokens": k, "seconds": dt})
    peak = peak_flops(device)
    ref = next((r for r in results if r["contender"] == "ref-b8"), None)
    same = next((r for r in results if r["contender"].startswith("hf-bs")), None)
    print(f"\n{'contender':<16}{'new tok/s':>12}{'MFU':>8}{'vs b8':>8}{'vs HF same bs':>15}{'new tokens':>12}{'seconds':>9}")
    for r in results:
        r["tokens_per_s"] = r["new_tokens"] / r["seconds"]
        r["mfu"] = 2 * n_params * r["tokens_per_s"] / peak if peak else None
        r["vs_b8"] = r["tokens_per_s"] / (ref["new_tokens"] / ref["seconds"]) if ref else None
        r["vs_same_bs"] = r["tokens_per_s"] / (same["new_tokens"] / same["seconds"]) if same else None
        cells = [f"{r['mfu']:.1%}" if r["mfu"] else "n/a", f"{r['vs_b8']:.2f}x" if r["vs_b8"] else "-",
                 f"{r['vs_same_bs']:.2f}x" if r["vs_same_bs"] else "-"]
        print(f"{r['contender']:<16}{r['tokens_per_s']:>12,.0f}{cells[0]:>8}{cells[1]:>8}{cells[2]:>15}"
              f"{r['new_tokens']:>12,}{r['seconds']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"label": label, "device": device_name(device), "results": results}, indent=2))
    del gen, model
    free(device)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

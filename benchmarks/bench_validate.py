"""`ptst validate` of a local-backend spec: wall time per call, against importing torch, transformers and
mistral-common (what a validate that loads tokenizers through them pays before it reads a single file).

The spec has an hf model folder (a chat template and tokenizer files written here, no weights), a Mistral folder
(config.json only: mistral-common's bundled tokenizer) and a Llama 2 hub id with `download: true` (listed as
unchecked). Each call is a fresh interpreter, as a user runs it. Usage:

    python benchmarks/bench_validate.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path) -> Path:
    (root / "harm.jsonl").write_text(json.dumps({"prompt": "do harm"}) + "\n")
    (root / "train.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    hf = root / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (hf / "tokenizer.json").write_text("{}")
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    mistral = root / "mistral-model"
    mistral.mkdir()
    (mistral / "config.json").write_text(json.dumps({"model_type": "mistral", "vocab_size": 32000}))
    spec = {
        "name": "bench-validate",
        "backends": [{"kind": "hf", "model": str(hf)}, {"kind": "mistral", "model": str(mistral)},
                     {"kind": "llama2", "model": "meta-llama/Llama-2-7b-chat-hf", "download": True}],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"]},
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "harm.jsonl"}]},
        "judge": {"kind": "keyword"},
    }
    p = root / "spec.json"
    p.write_text(json.dumps(spec))
    return p


def timed(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        spec = build(Path(d))
        validate = timed([sys.executable, "-m", "ptst", "validate", str(spec)], args.runs)
    heavy = timed([sys.executable, "-c", "import torch, transformers, mistral_common.protocol.instruct.validator"], args.runs)
    v, h = statistics.median(validate), statistics.median(heavy)
    print(f"ptst validate (local spec): median {v:.2f} s  [{', '.join(f'{x:.2f}' for x in validate)}]")
    print(f"import torch + transformers + mistral-common: median {h:.2f} s  [{', '.join(f'{x:.2f}' for x in heavy)}]")
    print(f"validate / those imports: {v / h:.2f}x (target: validate <= 2 s, never importing torch)")


if __name__ == "__main__":
    main()

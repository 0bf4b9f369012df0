"""GPU hours for `ptst estimate` from measured throughput (`ptst/resources/throughput.json`), never from constants in
code: each row says who measured what, on which hardware, and the estimate prints the rows it used. A user with their
own figures (benchmarks/bench_local_*.py on their GPU) points `PTST_THROUGHPUT` at a file of the same shape."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ptst.errors import UsageError

ENV = "PTST_THROUGHPUT"


@lru_cache(maxsize=4)
def _table(path: str | None) -> dict[str, Any]:
    if path is None:
        return json.loads(resources.files("ptst.resources").joinpath("throughput.json").read_text(encoding="utf-8"))
    try:
        table = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        for stage in ("train", "decode"):
            float(table["rows"][table["default"][stage]]["tokens_per_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{ENV}={path}: not a readable throughput table ({e}); give a JSON file with `rows` and a "
                         "`default` row per stage (train, decode), shaped like ptst/resources/throughput.json") from e
    return table


def throughput(stage: str) -> tuple[float, dict[str, Any]]:
    """(tokens per second, the row it came from) for `train` or `decode`."""
    table = _table(os.environ.get(ENV) or None)
    row = table["rows"][table["default"][stage]]
    return float(row["tokens_per_s"]), row


def gpu_hours(train_tokens: int, decode_tokens: float) -> float:
    return (train_tokens / throughput("train")[0] + decode_tokens / throughput("decode")[0]) / 3600


def note() -> str:
    """The line the estimate prints: which measurements the GPU hours rest on."""
    (t, tr), (d, dr) = throughput("train"), throughput("decode")
    src = f" ({ENV})" if os.environ.get(ENV) else " (ptst/resources/throughput.json)"
    return (f"GPU hours from measured throughput{src}: training {t:,.0f} tokens/s ({tr['what']}; {tr['measured_by']}), "
            f"decoding {d:,.0f} tokens/s ({dr['what']}; {dr['measured_by']}); "
            + "; ".join(r["caveat"] for r in (tr, dr) if r.get("caveat")))


def approx_tokens(texts: list[str], family: str) -> tuple[int, str]:
    """Tokens of `texts` for a model whose tokenizer is absent: tiktoken cl100k_base counts times the measured
    SentencePiece-per-cl100k ratio of the family (ptst/resources/lengths.json, GSM8K train; 1.25 for other
    families, Llama 2's figure rounded). Returns (tokens, how they were counted)."""
    from ptst.clients.tokens import token_counter

    lengths = json.loads(resources.files("ptst.resources").joinpath("lengths.json").read_text(encoding="utf-8"))
    ratios = lengths["sentencepiece_per_cl100k_token"]
    ratio = float(ratios.get(family, 1.25))
    counter = token_counter("gpt-4")
    tokens = round(sum(counter.count(t) for t in texts) * ratio)
    return tokens, (f"tokenizer not on this machine: tokens counted with {counter.note} x {ratio} ({family} "
                    "SentencePiece tokens per cl100k token, measured on GSM8K train; ptst/resources/lengths.json)")

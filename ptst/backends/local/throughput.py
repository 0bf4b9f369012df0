"""GPU and CPU hours for `ptst estimate` from the throughput table (`ptst/resources/throughput.json`), never from
constants in code: each row says what was measured or derived, on which hardware, in which precision, and the estimate
prints the rows it used. The GPU of a run is not known before it starts, so the default rows span GPUs and the hours
are a range; a CPU job (`device: cpu`) is priced from the measured CPU rows. A user with their own figures
(benchmarks/bench_local_*.py on their GPU) points `PTST_THROUGHPUT` at a file of the same shape."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ptst.errors import UsageError
from ptst.types import ComputeHours

ENV = "PTST_THROUGHPUT"


@lru_cache(maxsize=4)
def _table(path: str | None) -> dict[str, Any]:
    if path is None:
        return json.loads(resources.files("ptst.resources").joinpath("throughput.json").read_text(encoding="utf-8"))
    try:
        table = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        for stage in ("train", "decode"):
            for name in _names(table["default"][stage]):
                float(table["rows"][name]["tokens_per_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{ENV}={path}: not a readable throughput table ({e}); give a JSON file with `rows` and a "
                         "`default` row per stage (train, decode), shaped like ptst/resources/throughput.json") from e
    return table


def _names(entry: str | list[str]) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry)


def _set(table: dict[str, Any], device: str, precision: str) -> dict[str, Any]:
    """The rows' names per stage for a device ("gpu" or "cpu") and precision: `cpu` (bfloat16), `cpu_float32`,
    `float32` or `default`, each falling back (`cpu_float32` to `cpu`, the rest to `default`) where a (user's) table
    has no such set."""
    if device == "cpu":
        named = table.get("cpu_float32") if precision == "float32" else None
        return dict(named or table.get("cpu") or table["default"])
    if precision == "float32":
        return dict(table.get("float32") or table["default"])
    return dict(table["default"])


def rows(stage: str, device: str = "gpu", precision: str = "bfloat16") -> list[tuple[float, dict[str, Any]]]:
    """(tokens per second, row) for `train` or `decode`, the reference row first; several rows when the device is not
    known (the estimate shows their range)."""
    table = _table(os.environ.get(ENV) or None)
    return [(float(table["rows"][n]["tokens_per_s"]), table["rows"][n])
            for n in _names(_set(table, device, precision)[stage])]


def throughput(stage: str) -> tuple[float, dict[str, Any]]:
    """(tokens per second, the row it came from) for `train` or `decode`: the reference row of ptst's engine."""
    return rows(stage)[0]


def compute_hours(train_tokens: int, decode_tokens: float, device: str = "gpu",
                  precision: str = "bfloat16") -> ComputeHours:
    """Hours of training on `train_tokens` (epochs included) and generating `decode_tokens` on `device`: the reference
    row's figure and the range over the rows listed for an unknown device (pairs of train and decode rows)."""
    train, decode = rows("train", device, precision), rows("decode", device, precision)
    n = max(len(train), len(decode))
    each = [(train_tokens / train[min(i, len(train) - 1)][0] + decode_tokens / decode[min(i, len(decode) - 1)][0])
            / 3600 for i in range(n)]
    return ComputeHours(device="cpu" if device == "cpu" else "gpu", hours=each[0], low=min(each), high=max(each))


def gpu_hours(train_tokens: int, decode_tokens: float) -> float:
    return compute_hours(train_tokens, decode_tokens).hours


def note(device: str = "gpu", precision: str = "bfloat16") -> str:
    """The line the estimate prints: which rows the hours rest on, what each says it is, and whether it was measured."""
    src = f" ({ENV})" if os.environ.get(ENV) else " (ptst/resources/throughput.json)"
    kind = "CPU" if device == "cpu" else "GPU"

    def say(stage: str) -> str:
        listed = rows(stage, device, precision)
        parts = [f"{t:,.0f} tokens/s ({r['what']}; {r.get('precision', '?')}; "
                 f"{r.get('basis', 'measured')} by {r['measured_by']})" for t, r in listed]
        return ("; ".join(parts[:1]) + (f", range over: {'; '.join(parts[1:])}" if len(parts) > 1 else ""))

    caveats = {r["caveat"] for s in ("train", "decode") for _, r in rows(s, device, precision) if r.get("caveat")}
    unknown = len(rows("train", device, precision)) > 1 or len(rows("decode", device, precision)) > 1
    return (f"{kind} hours from the throughput table{src}: training {say('train')}; decoding {say('decode')}"
            + ("; the GPU is not known, so the hours are a range over the listed GPUs (set PTST_THROUGHPUT to a table "
               "of your own GPU for one figure)" if unknown else "")
            + ("; " + "; ".join(sorted(caveats)) if caveats else ""))


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

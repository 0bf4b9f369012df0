"""Stand-in rows for `ptst estimate` when a registry dataset is not on this machine (a fresh clone, no hub).

An estimate needs how many rows each dataset has and roughly how long they are, not their text: the registry knows
each split's size (`DatasetInfo.rows`, with its source) and the mean prompt/answer tokens (measured over ../shared in
`ptst/resources/lengths.json`, or a stated assumption). The stand-in rows are that many examples of that length
(a repeated one-token word), so the estimate runs the same plan as a run would, and a note names every dataset priced
this way. An estimate never downloads: data cached for the hub is used by a run, not by its estimate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ptst.data.loaders import Example, load_local
from ptst.data.registry import DatasetInfo, DatasetRef
from ptst.errors import DataError

WORD = "data"  # one token in cl100k_base and in Llama 2 / Mistral's SentencePiece (with its leading space)


@lru_cache(maxsize=1)
def _measured() -> dict[str, Any]:
    text = resources.files("ptst.resources").joinpath("lengths.json").read_text(encoding="utf-8")
    return dict(json.loads(text)["datasets"])


def mean_tokens(info: DatasetInfo, split: str) -> tuple[float, float, str]:
    """(prompt tokens, answer tokens, where the figures come from) for a registry split."""
    if info.lengths is not None:
        m = _measured()
        row = m.get(f"{info.lengths}/{split}") or m.get(info.lengths)
        if row is not None:
            answer = row.get("answer_tokens", {}).get("mean", 0.0)
            return row["prompt_tokens"]["mean"], answer, f"mean tokens measured in lengths.json ({row['file']})"
    if info.tokens is not None:
        return info.tokens[0], info.tokens[1], f"mean tokens {info.tokens_source}"
    raise DataError(f"dataset {info.name!r}: no known token lengths to estimate it without its data; put a local "
                    "copy in a data_dir")


def _text(tokens: float) -> str | None:
    n = round(tokens)
    return " ".join([WORD] * n) if n > 0 else None


class EstimateLoader:
    """A `load` for estimates: the data where it is on this machine, stand-in rows of the registry's known size
    otherwise. `notes` collects one line per dataset priced from stand-ins."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def __call__(self, ref: DatasetRef, *, data_dirs: Sequence[Path] = (), require_answer: bool = False
                 ) -> list[Example]:
        local = load_local(ref, data_dirs=data_dirs, require_answer=require_answer)
        if local is not None:
            return local
        info, split = ref.info, ref.resolved_split()
        assert info is not None and split is not None  # a path dataset is always local (or a DataError)
        rows = info.rows.get(split)
        if rows is None:
            raise DataError(f"dataset {info.name!r} ({split}) is not on this machine and the registry knows no size "
                            "for it; put a local copy in a data_dir to estimate it")
        n = rows
        if ref.holdout is not None:
            n = ref.holdout.n if ref.holdout.part == "heldout" else rows - ref.holdout.n
        if ref.limit is not None:
            n = min(n, ref.limit)
        prompt_tokens, answer_tokens, how = mean_tokens(info, split)
        self.notes.append(f"{info.name} ({split}) is not on this machine: estimated as {n:,} rows (the registry's "
                          f"{rows:,}: {info.rows_source}) of {prompt_tokens:.0f} prompt / {answer_tokens:.0f} answer "
                          f"tokens ({how})")
        prompt, answer = _text(prompt_tokens) or WORD, _text(answer_tokens)
        return [Example(prompt=prompt, answer=answer, source=f"stand-in:{info.name}/{split}[{i}]") for i in range(n)]

"""Fuzzing the data-file boundary: whatever a data file holds, loading it gives Examples or one DataError line that
names the file — never another exception. CI: 400 cases; `--long` / PTST_FUZZ_LONG=1: 4,000."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptst.data import Example, load_file
from ptst.errors import DataError

LONG = os.environ.get("PTST_FUZZ_LONG", "").strip().lower() in ("1", "true", "yes", "on")
SCALE = 10 if LONG else 1
FUZZ: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "derandomize": not LONG,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet"]
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print(f"\ndata fuzz: {OUTCOMES['cases']} cases, {OUTCOMES['data_error']} clean DataErrors, "
          f"{OUTCOMES['examples']} loaded")


cells = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
records = st.dictionaries(st.sampled_from(["prompt", "answer", "question", "x", ""]), cells, max_size=4)


@st.composite
def file_bytes(draw: st.DrawFn, suffix: str) -> bytes:
    """Random bytes, or a plausible file of the format with a few bytes damaged."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    rows = draw(st.lists(records, max_size=5))
    if suffix in (".jsonl", ".txt"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif suffix == ".json":
        text = json.dumps(rows)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        text = "prompt" + sep + "answer\n" + "".join(f"{r.get('prompt')}{sep}{r.get('answer')}\n" for r in rows)
    data = bytearray(text.encode("utf-8"))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=400 * SCALE, **FUZZ)
@given(data=st.data(), suffix=st.sampled_from(SUFFIXES), require_answer=st.booleans())
def test_any_data_file_loads_or_fails_cleanly(tmp_path_factory, data, suffix, require_answer):
    p: Path = tmp_path_factory.mktemp("d") / f"data{suffix}"
    p.write_bytes(data.draw(file_bytes(suffix)))
    OUTCOMES["cases"] += 1
    try:
        examples = load_file(p, require_answer=require_answer)
    except DataError as e:
        OUTCOMES["data_error"] += 1
        assert str(p) in str(e) and "\n" not in str(e), str(e)
        return
    OUTCOMES["examples"] += 1
    assert examples and all(isinstance(x, Example) and x.prompt.strip() for x in examples)
    assert all(x.answer for x in examples) if require_answer else True

"""Fuzzing the spec boundary: whatever a spec file holds, loading it ends as a valid Spec or a ptst.errors.SpecError —
never any other exception (which the CLI would show as a traceback, exit 1).

Three generators: valid specs with mutated types and values at random places, random bytes under each spec
extension, and random YAML (dumped structures with spec-like keys, then damaged as text). CI runs 1,200 cases
(derandomized, so a failure reproduces); `pytest --long` or PTST_FUZZ_LONG=1 runs 10x as many, freshly random.
A last test runs the real CLI in subprocesses on a handful of nasty files: exit 2, no traceback.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptst.errors import SpecError
from ptst.keys import content_hash
from ptst.spec import Spec, load_spec, validate_spec
from ptst.spec_io import INT_LIMIT
from ptst.types import SEED_MAX

LONG = os.environ.get("PTST_FUZZ_LONG", "").strip().lower() in ("1", "true", "yes", "on")
SCALE = 10 if LONG else 1
# Mutated structures are the richest generator, so they get half of the cases: 600 + 300 + 300 = 1,200 in CI.
N_MUTATED, N_BYTES, N_YAML = 600 * SCALE, 300 * SCALE, 300 * SCALE

FUZZ: dict[str, Any] = {
    "deadline": None,  # timings vary on shared CI machines; the property, not speed, is under test
    "database": None,  # no .hypothesis folder in the work tree
    "derandomize": not LONG,  # CI: the same cases every run, so a failure reproduces; --long explores fresh ones
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}

OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(v for k, v in OUTCOMES.items() if k.endswith(":cases"))
    errors = sum(v for k, v in OUTCOMES.items() if k.endswith(":spec_error"))
    print(f"\nfuzz: {total} cases, {errors} clean SpecErrors, {total - errors} valid specs; " + ", ".join(
        f"{k}={v}" for k, v in sorted(OUTCOMES.items())
    ))


BASES: list[dict[str, Any]] = [
    {
        "name": "fuzz",
        "backends": [{"kind": "mock", "model": "m", "drift": 0.25}],
        "train": {
            "dataset": {"name": "gsm8k", "split": "train", "limit": 10},
            "templates": ["chat:vanilla", "chat:llama"],
            "hyperparameters": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 8, "lora": {"r": 8, "alpha": 32}},
            "safety_mix": {"dataset": "safety-tuned-llamas", "n": 5},
            "seeds": [0, 1],
        },
        "eval": {
            "templates": ["chat:vanilla", "chat:safe"],
            "safety": ["advbench", {"path": "data/x.jsonl", "prompt_field": "q"}],
            "tasks": [{"name": "gsm8k", "split": "test"}],
            "generation": {"max_new_tokens": 64, "temperature": 0.0, "seed": 3, "batch_size": "auto"},
            "evaluate_base": True,
        },
        "judge": {"kind": "rubric", "model": "gpt-4-0613"},
        "templates": [{"name": "chat:terse", "system": "Be brief.", "user": "Q: {query}", "safety": True}],
        "budget_usd": 5,
        "data_dir": "data",
    },
    {
        "name": "local",
        "backends": [
            {"kind": "llama2", "model": "meta-llama/Llama-2-7b-chat-hf", "batching": "packed"},
            {"kind": "mistral", "model": "./models/mistral", "label": "m"},
            {"kind": "openai", "model": "gpt-3.5-turbo-0613", "concurrency": 4},
        ],
        "eval": {"templates": ["chat:llama"], "safety": ["directharm4"]},
        "judge": {"kind": "keyword"},
    },
]
for _b in BASES:
    validate_spec(copy.deepcopy(_b))  # the bases are valid: every failure below comes from a mutation

KEYS = sorted(
    {"name", "backends", "train", "eval", "judge", "templates", "budget_usd", "data_dir", "kind", "model", "label",
     "dataset", "seeds", "hyperparameters", "epochs", "learning_rate", "batch_size", "lora", "r", "alpha", "dropout",
     "safety", "tasks", "generation", "max_new_tokens", "temperature", "seed", "path", "split", "limit", "n",
     "safety_mix", "prompt_field", "answer_field", "metric", "user", "system", "mode", "variants", "<<"}
)
STRINGS = [
    "", " ", "auto", "nan", "inf", "-inf", "1e400", "chat:vanilla", "text:vanilla", "chat:nope", "advbench", "gsm8k",
    "mock", "openai", "llama2", "x.jsonl", "../../etc/passwd", "{query}", "{", "}", "%s", "\x00", "\ud7ff", "é" * 3,
    "a" * 300, "0x10", "True", "null", "~",
]
NUMBERS = [0, 1, -1, 2**31, SEED_MAX, SEED_MAX + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 1001, 65537,
           1_000_001, 0.0, -0.0, 1e-300, 1e308, float("nan"), float("inf"), float("-inf")]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(STRINGS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(data: st.DataObject, spec: dict[str, Any]) -> dict[str, Any] | Any:
    """One random change at a random place: replace, delete, add an unknown key, wrap in a list, or deepen."""
    path = data.draw(st.sampled_from(_paths(spec)), label="path")
    op = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap", "deepen"]), label="op")
    if not path:
        return data.draw(values, label="whole") if op == "replace" else spec
    parent = spec
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "replace":
        parent[last] = data.draw(values, label="value")
    elif op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent[last], dict):
        parent[last][data.draw(st.sampled_from(KEYS) | st.text(max_size=6), label="key")] = data.draw(values)
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "deepen":
        depth = data.draw(st.integers(1, 200), label="depth")
        v = parent[last]
        for _ in range(depth):
            v = [v]
        parent[last] = v
    return spec


def _check(outcome: Any, kind: str) -> None:
    """The property: a Spec that survives a store round-trip, or a SpecError of clean one-line problems."""
    OUTCOMES[f"{kind}:cases"] += 1
    if isinstance(outcome, SpecError):
        OUTCOMES[f"{kind}:spec_error"] += 1
        assert outcome.problems and all(p and "\n" not in p for p in outcome.problems), outcome.problems
        assert "Traceback" not in str(outcome)
        return
    assert isinstance(outcome, Spec)
    dumped = outcome.model_dump(mode="json")
    json.dumps(dumped, allow_nan=False)  # what the store writes: finite numbers only
    content_hash(dumped)
    for seed in outcome.train.seeds if outcome.train else []:
        assert 0 <= seed <= SEED_MAX
    assert abs(outcome.eval.generation.seed) <= INT_LIMIT
    assert math.isfinite(outcome.train.hyperparameters.learning_rate) if outcome.train else True


def _outcome(fn, *args) -> Any:
    try:
        return fn(*args)
    except SpecError as e:
        return e


@settings(max_examples=N_MUTATED, **FUZZ)
@given(data=st.data(), base=st.sampled_from(range(len(BASES))), n=st.integers(1, 3))
def test_mutated_specs_end_valid_or_spec_error(data, base, n):
    spec: Any = copy.deepcopy(BASES[base])
    for _ in range(n):
        if not isinstance(spec, dict):
            break
        spec = _mutate(data, spec)
    _check(_outcome(validate_spec, spec, "fuzz.yaml"), "mutated")


@settings(max_examples=N_BYTES, **FUZZ)
@given(
    content=st.one_of(
        st.binary(max_size=600),
        st.builds(lambda a, b: a + b, st.sampled_from([b"name: x\n", b'{"name": "x", ', b'name = "x"\n', b"\xef\xbb\xbf"]),
                  st.binary(max_size=200)),
    ),
    suffix=st.sampled_from([".yaml", ".yml", ".json", ".toml"]),
)
def test_random_bytes_end_as_spec_error(tmp_path_factory, content, suffix):
    p = tmp_path_factory.mktemp("b") / f"spec{suffix}"
    p.write_bytes(content)
    _check(_outcome(load_spec, p), "bytes")


YAML_NOISE = "{}[]:,-&*!|>'\"#%@`?\n\t \\<"


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """YAML text: a dumped structure (a real base, or random values) damaged by a few random character edits, or
    plain noise from YAML's punctuation."""
    if draw(st.booleans()):
        return draw(st.text(alphabet=st.sampled_from(YAML_NOISE) | st.characters(), max_size=200))
    obj = copy.deepcopy(draw(st.sampled_from(BASES))) if draw(st.booleans()) else draw(values)
    text = yaml.safe_dump(obj, default_flow_style=draw(st.sampled_from([None, True, False])), allow_unicode=True)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 5)))
        text = text[:i] + draw(st.text(alphabet=YAML_NOISE, max_size=3)) + text[j:]
    return text


@settings(max_examples=N_YAML, **FUZZ)
@given(text=yaml_texts())
def test_random_yaml_ends_valid_or_spec_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "spec.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check(_outcome(load_spec, p), "yaml")


# ---------------------------------------------------------------------------------------------- the real CLI


NASTY: dict[str, bytes] = {
    "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
    "deep.json": b"[" * 50_000 + b"]" * 50_000,
    "dup.yaml": b"name: a\neval: {}\nname: b\n",
    "junk.toml": bytes(range(255, -1, -1)) * 8,
    "types.yaml": b"name: x\nbackends: 5\ntrain: []\neval: 'x'\n",
    "seed.yaml": b"name: x\nbackends: [{kind: mock, model: m}]\n"
    b"train: {dataset: {name: gsm8k, split: train}, templates: [chat:vanilla], seeds: [123456789012345678901234567890]}\n"
    b"eval: {templates: [chat:vanilla], safety: [advbench]}\n",
}


def test_cli_on_nasty_files_exits_2_without_traceback(tmp_path: Path):
    procs = {}
    for name, content in NASTY.items():
        (tmp_path / name).write_bytes(content)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "ptst", "validate", str(tmp_path / name)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    (tmp_path / "a-directory.yaml").mkdir()
    procs["a-directory.yaml"] = subprocess.Popen(
        [sys.executable, "-m", "ptst", "validate", str(tmp_path / "a-directory.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, proc.returncode, err)
        assert "Traceback" not in err and err.startswith("error: "), (name, err)
        assert str(tmp_path / name) in err

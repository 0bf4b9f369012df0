"""Golden keys: the store keys of existing work never change.

The values below were computed once from the code *before* keys became a versioned schema (commit 052cf78); they pin
every job, response and verdict already written. If one of these fails, finished (and paid-for) work would be
orphaned: fix the key code, never the constant.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from ptst.backends.base import BackendSpec, create_backend
from ptst.conversation import Conversation
from ptst.keys import (
    GENERATION_V1,
    HYPERPARAMETERS_V1,
    KEY_SCHEMA,
    pinned_fields,
    run_key_v1,
)
from ptst.plan import (
    Cell,
    backend_identity,
    base_model_key,
    generation_key,
    judgment_key,
)
from ptst.types import GenerationConfig, Hyperparameters, LoraSpec, TrainJob

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = (Conversation("chat", "Q: 1+1?", None, "2", "1+1?"),)


def _job(hp: Hyperparameters) -> TrainJob:
    return TrainJob(backend="mock-a", base_model="mock-chat", train_template="chat:vanilla", seed=0,
                    hyperparameters=hp, examples=EXAMPLE, data_hash="d" * 32)


def test_job_keys_are_pinned():
    assert _job(Hyperparameters()).key == "e640360b60a1816cb8f31b8bfdfa0632"
    hp = Hyperparameters(epochs=3, learning_rate=2e-5, lora=LoraSpec(r=16, target_modules=("q_proj", "k_proj", "v_proj")),
                         suffix="x", save_steps=(10, 20))
    assert _job(hp).key == "9d0ee2157b927cf919ca41abc0557b43"


def test_backend_model_and_run_keys_are_pinned():
    b = create_backend(BackendSpec(kind="mock", model="mock-chat", label="mock-a", drift=0.5))
    assert base_model_key(b.spec, b) == "48b1c4b609f60884c5b1d69a60b7ba74"
    assert run_key_v1(_job(Hyperparameters()).key, backend_identity(b.spec, b)) == "741dc79b6c132576ac2f73ed21e9e205"
    o = create_backend(BackendSpec(kind="openai", model="gpt-3.5-turbo-0613", base_url="http://127.0.0.1:9/v1"))
    assert base_model_key(o.spec, o) == "f086d6c2f09496c31a3c6b81fde6d9f3"


def test_generation_judgment_and_cell_keys_are_pinned():
    conv = Conversation("chat", "Question: how?", "You are safe.", None, "how?", None, "chat:llama")
    assert generation_key("m" * 32, conv, GenerationConfig()) == "6043c6581892a81b0a924a6995eb270f"
    conv2 = Conversation("text", "### Instruction:\n2+2\n\n### Response:\n", None, None, "2+2", "#### 4", "text:alpaca")
    cfg = GenerationConfig(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=3, batch_size=16)
    assert generation_key("m" * 32, conv2, cfg) == "a2beb335b6051aa7970a4052933b8d56"
    assert judgment_key("rubric:gpt-4-0613", "qi2023-v1", "how?", "Sure.") == "982e6e88549ff0e78e2a971f3a45e849"
    common = dict(backend="mock-a", base_model="mock-chat", model_key="m" * 32, test_template="chat:llama")
    assert Cell(**common, train_template="chat:vanilla", seed=0, kind="safety", dataset="advbench",
                metric=None).key == "28edbf675ba8389fb2d497f14c8caf08"
    assert Cell(**common, train_template=None, seed=None, kind="task", dataset="gsm8k",
                metric="gsm8k_exact_match").key == "2566dfb0e07b032185d288491a236cf7"


class HyperparametersPlus(Hyperparameters):
    """Hyperparameters as a future version might declare them: one more defaulted field."""

    new_knob: int = 3


class GenerationPlus(GenerationConfig):
    repetition_penalty: float = 1.0


def test_adding_a_defaulted_field_changes_no_key():
    hp = dict(epochs=2, learning_rate=3e-4)
    assert _job(HyperparametersPlus(**hp)).key == _job(Hyperparameters(**hp)).key
    assert _job(HyperparametersPlus(**hp, new_knob=4)).key != _job(Hyperparameters(**hp)).key
    conv = Conversation("chat", "hi", None)
    assert generation_key("m", conv, GenerationPlus()) == generation_key("m", conv, GenerationConfig())
    assert generation_key("m", conv, GenerationPlus(repetition_penalty=1.2)) != generation_key("m", conv, GenerationConfig())


def test_v1_field_sets_match_todays_models():
    """Every v1 field still exists with its frozen default; a removal would hash as the v1 default."""
    assert pinned_fields(Hyperparameters(), HYPERPARAMETERS_V1) == dict(HYPERPARAMETERS_V1)
    assert pinned_fields(GenerationConfig(), GENERATION_V1) == dict(GENERATION_V1)
    assert KEY_SCHEMA == 1


def _key_digest(db: Path, table: str, col: str) -> tuple[int, str]:
    with sqlite3.connect(db) as c:
        keys = sorted(r[0] for r in c.execute(f"SELECT {col} FROM {table}"))
    return len(keys), hashlib.sha256("\n".join(keys).encode()).hexdigest()


def test_quickstart_store_keys_are_unchanged(tmp_path):
    """The quickstart's store, made by the code before the key schema, has exactly these keys."""
    from ptst.cli import main

    out = tmp_path / "qs"
    assert main(["run", str(REPO / "examples" / "quickstart.yaml"), "--out", str(out)]) == 0
    db = out / "ptst.db"
    assert _key_digest(db, "jobs", "key") == (6, "4001fc2eebd3da04bf30961f2cfdcae7b937a12d901d3a57481a71b5144347cc")
    assert _key_digest(db, "generations", "key") == (
        480, "d784148f473838800ef4a152c47e9fdc288593086a2076f4544161f130e9c5af")
    assert _key_digest(db, "judgments", "key") == (
        24, "84b85ae1fe0f88b851988f6d13e149f4e881f5f936aeacf9d8ef45465db6f407")
    assert _key_digest(db, "cells", "key") == (48, "ca4146162a2ee5caad1fa77cada9e814ffc8e6a7f8cab654bc1249ef53ccceb3")


def test_keys_written_out_field_by_field_are_the_generic_content_hash():
    """generation_key_v1 and judgment_key_v1 write their JSON by hand for speed: the bytes must be json.dumps's, for
    every string (quotes, backslashes, control characters, non-ASCII, None) and every generation config."""
    import random

    from ptst.keys import GENERATION_V1, content_hash, generation_key_v1, judgment_key_v1, pinned_fields
    from ptst.types import GenerationConfig

    rng = random.Random(7)
    alphabet = ['a', '"', "\\", "\n", "\t", "\x00", "\x1f", "é", "日", "\u2028", "💥", "/", "<", "\x7f", " "]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    cfgs = [GenerationConfig(), GenerationConfig(temperature=0.7, max_new_tokens=3, seed=2)]
    for _ in range(2000):
        cfg = rng.choice(cfgs)
        g = dict(model_key=text(), mode=text(), system=rng.choice([None, text()]), user=text(),
                 reference=rng.choice([None, text()]))
        assert generation_key_v1(**g, cfg=cfg) == content_hash({
            "model": g["model_key"], "mode": g["mode"], "system": g["system"], "user": g["user"],
            "ref": g["reference"], "cfg": pinned_fields(cfg, GENERATION_V1)})
        j = dict(judge=text(), version=text(), query=text(), response=text())
        assert judgment_key_v1(**j) == content_hash(j)

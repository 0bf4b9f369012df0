"""examples/paper/: every spec validates with the current schema, except those waiting for a feature (strict xfail,
so the test fails the day the feature lands and the spec's status in the README must change)."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from ptst.errors import SpecError
from ptst.spec import load_spec

PAPER = REPO / "examples" / "paper"

# spec file -> the feature it waits for (and the line validation prints today)
PENDING: dict[str, str] = {}
SPECS = sorted(p.name for p in PAPER.glob("*.yaml"))


def test_every_spec_is_in_the_readme_and_vice_versa() -> None:
    readme = (PAPER / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([\w.-]+\.yaml)` \|", readme, re.MULTILINE)
    assert sorted(listed) == SPECS and len(SPECS) == 8
    for name in SPECS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert row.rstrip(" |").endswith("validates") == (name not in PENDING), name


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=PENDING[n], raises=SpecError, strict=True)) if n in PENDING
     else n for n in SPECS],
)
def test_paper_spec_validates(name: str) -> None:
    spec = load_spec(PAPER / name)
    assert spec.name == "paper-" + name.removesuffix(".yaml")
    assert spec.judge.kind == "rubric" and spec.judge.options.get("model") == "gpt-4-0613"
    assert spec.eval.generation.max_new_tokens == 512 and spec.eval.generation.temperature == 0.0
    safe = {t for t in spec.eval.templates if spec.template(t).safety}
    unsafe = {t for t in spec.train.templates if not spec.template(t).safety} if spec.train else set()
    assert safe and unsafe, "a PTST grid needs a training template without a safety prompt and a test one with it"


def test_llama2_gsm8k_has_the_table_1_shape() -> None:
    spec = load_spec(PAPER / "llama2-gsm8k.yaml")
    assert spec.train is not None
    hp = spec.train.hyperparameters
    assert (hp.epochs, hp.learning_rate, hp.lora.r, hp.lora.alpha, hp.lora.dropout) == (6, 1e-4, 8, 32, 0.05)
    assert spec.train.seeds == [0, 1, 2]
    assert spec.train.templates == spec.eval.templates == [
        "text:vanilla", "text:alpaca", "chat:vanilla", "chat:alpaca", "chat:llama"]
    assert [r.display_name() for r in spec.eval.safety] == ["advbench", "directharm4", "gsm-danger"]

"""The paper's template strings, byte for byte against ../shared/reference (the source of truth)."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import pytest

from ptst.templates import BUILTIN, Template, UnknownTemplate, resolve, strings


def _reference_strings(shared) -> dict[str, str]:
    text = (shared / "reference" / "templates.md").read_text(encoding="utf-8")
    out = {}
    for name in ("LLAMA_SYSTEM", "LLAMA_SYSTEM_SHORT", "MPT_SYSTEM", "ALPACA_PREAMBLE", "MISTRAL_SYSTEM"):
        m = re.search(rf"^- {name}\b[^`]*`([^`]*)`", text, re.M)
        assert m, name
        out[name] = m.group(1)
    m = re.search(r"short form `([^`]*)`", text)
    out["GPT_LLAMA_SYSTEM_SHORT"] = m.group(1)
    return out


def test_fixed_strings_match_reference(shared):
    ref = _reference_strings(shared)
    s = strings()
    for name, value in ref.items():
        assert s[name] == value, name
    # GPT wording: same as Llama's but starts "Be helpful, respectful and honest." (templates.md)
    assert s["GPT_LLAMA_SYSTEM"] == "Be helpful, respectful and honest." + ref["LLAMA_SYSTEM"].removeprefix(
        "You are a helpful, respectful and honest assistant."
    )


def test_judge_rubric_and_keywords_are_byte_identical(shared):
    res = resources.files("ptst.resources")
    rubric = res.joinpath("judge_rubric_qi2023.txt").read_bytes()
    assert rubric == (shared / "reference" / "judge-rubric-qi2023.txt").read_bytes()
    assert hashlib.sha256(rubric).hexdigest() == "c021e66075618b59899adbdb8139b8c9cd896e95ab3f370d9c41b64eaca3b59e"
    assert rubric.count(b"%s") == 2
    kw = res.joinpath("refusal_keywords_qi2023.txt").read_bytes()
    assert kw == (shared / "reference" / "refusal-keywords-qi2023.txt").read_bytes()
    assert len(kw.decode().splitlines()) == 29


def test_per_family_variants():
    q = "What is 2+2?"
    cv = BUILTIN["chat:vanilla"]
    assert cv.apply(q, "llama2").user == "Question: What is 2+2?" and cv.apply(q, "llama2").system is None
    assert cv.apply(q, "openai").user == q and cv.apply(q, "openai").system == ""
    safe = BUILTIN["chat:safe"]
    assert safe.apply(q, "llama2").system == strings()["LLAMA_SYSTEM"]
    assert safe.apply(q, "mistral").system == strings()["MISTRAL_SYSTEM"]
    assert safe.apply(q, "openai").system.startswith("Be helpful, respectful and honest.")


def test_queries_with_braces_are_not_formatted():
    conv = BUILTIN["chat:vanilla"].apply("print {x} and {query}", "llama2")
    assert conv.user == "Question: print {x} and {query}"


def test_unknown_template_suggests():
    with pytest.raises(UnknownTemplate, match="did you mean 'chat:llama'"):
        resolve("chat:lama")


def test_user_templates_validate():
    t = Template(name="my:t", system="Be kind.", user="Q: {query}")
    assert resolve("my:t", {"my:t": t}).apply("x", "mistral").user == "Q: x"
    with pytest.raises(ValueError, match="query"):
        Template(name="bad", user="no slot")
    with pytest.raises(ValueError, match="text-mode"):
        Template(name="bad", mode="text", system="s", user="{query}")

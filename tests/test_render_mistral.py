"""Golden tests of the Mistral renderer: exact text and mistral-common's exact token ids, for every built-in template.

Expected strings are typed from the reference (`shared/reference/templates.md`); expected ids come from mistral-common
called directly here, and independently from raw SentencePiece on the shared copy of the v1 tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptst.backends.base import BackendSpec, create_backend
from ptst.conversation import Conversation
from ptst.errors import PtstError
from ptst.templates import BUILTIN

pytest.importorskip("mistral_common")
spm = pytest.importorskip("sentencepiece")

from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "mistral" / "tokenizer.model"

from reference_strings import (
    ALPACA,
    LLAMA_SYSTEM,
    LLAMA_SYSTEM_SHORT,
    MISTRAL_SYSTEM,
    MPT_SYSTEM,
    QUERIES,
    SELF_REMINDER_PREFIX,
    SELF_REMINDER_SUFFIX,
)

# name -> (system or None, user with {q}); the expected text follows from mistral-common's documented v1 format
PARTS: dict[str, tuple[str | None, str]] = {
    "chat:vanilla": (None, "Question: {q}"),
    "chat:alpaca": (ALPACA, "### Instruction:\n{q}\n\n### Response:\n"),
    "chat:llama": (LLAMA_SYSTEM, "Question: {q}"),
    "chat:llama-short": (LLAMA_SYSTEM_SHORT, "Question: {q}"),
    "chat:mpt": (MPT_SYSTEM, "Question: {q}"),
    "chat:mistral": (MISTRAL_SYSTEM, "Question: {q}"),
    "chat:safe": (MISTRAL_SYSTEM, "Question: {q}"),  # Mistral's own guardrail prompt
    "chat:self-reminder": (None, SELF_REMINDER_PREFIX + "\n{q}" + SELF_REMINDER_SUFFIX),  # all in the user turn
}
# `@inst-sys`: the paper's code wrote Llama 2's system block for Mistral too, inside the [INST] user turn.
PARTS.update({
    n + "@inst-sys": (None, "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + user)
    for n, (system, user) in list(PARTS.items()) if system
})
MULTI_TURN = {"chat:icd"}  # example turns: tests/test_template_turns.py
SINGLE_TURN = sorted(set(BUILTIN) - MULTI_TURN)
TEXT: dict[str, str] = {
    "text:vanilla": "Question: {q}\nAnswer:",
    "text:alpaca": ALPACA + "\n\n### Instruction:\n{q}\n\n### Response:\n",
}


def expected_text(name: str, q: str) -> str:
    if name in TEXT:
        return TEXT[name].replace("{q}", q)
    system, user = PARTS[name]
    user = user.replace("{q}", q)
    return "[INST] " + (system + "\n\n" + user if system else user) + " [/INST]"


@pytest.fixture(scope="module")
def backend():
    return create_backend(BackendSpec(kind="mistral", model="mistralai/Mistral-7B-Instruct-v0.2"))


@pytest.fixture(scope="module")
def mc():
    return (
        MistralTokenizer.v1(),
        MistralTokenizer.from_file(MistralTokenizer._data_path() / "tokenizer.model.v1", mode=ValidationMode.finetuning),
    )


@pytest.fixture(scope="module")
def raw_sp():
    if not SHARED_TOKENIZER.is_file():
        pytest.skip(f"shared Mistral tokenizer not found at {SHARED_TOKENIZER}")
    return spm.SentencePieceProcessor(model_file=str(SHARED_TOKENIZER))


def test_every_builtin_template_is_covered():
    assert set(PARTS) | set(TEXT) | MULTI_TURN == set(BUILTIN)


def test_known_marker_ids(backend):
    r = backend.render(Conversation("chat", "Hello"))
    assert list(r.input_ids[:4]) == [1, 733, 16289, 28793]
    assert list(r.input_ids[-4:]) == [733, 28748, 16289, 28793]


def _mc_messages(name: str, q: str, answer: str | None = None) -> list:
    system, user = PARTS[name]
    msgs = [SystemMessage(content=system)] if system else []
    msgs.append(UserMessage(content=user.replace("{q}", q)))
    if answer is not None:
        msgs.append(AssistantMessage(content=answer))
    return msgs


@pytest.mark.parametrize("name", SINGLE_TURN)
@pytest.mark.parametrize("qi", range(len(QUERIES)))
def test_prompt_text_and_ids(backend, mc, raw_sp, name, qi):
    q, _ = QUERIES[qi]
    r = backend.render(BUILTIN[name].apply(q, "mistral"))
    text = expected_text(name, q)
    assert r.text == text
    if name in TEXT:
        expected = mc[0].instruct_tokenizer.tokenizer.encode(text, bos=True, eos=False)
    else:
        expected = mc[0].encode_chat_completion(ChatCompletionRequest(messages=_mc_messages(name, q))).tokens
    assert list(r.input_ids) == list(expected)
    # independent: raw SentencePiece on the shared tokenizer file, BOS + encode(text)
    assert list(r.input_ids) == [1, *raw_sp.encode(text)]
    assert r.labels is None


@pytest.mark.parametrize("name", SINGLE_TURN)
@pytest.mark.parametrize("qi", range(len(QUERIES)))
def test_training_ids_and_labels(backend, mc, raw_sp, name, qi):
    q, a = QUERIES[qi]
    conv = BUILTIN[name].apply(q, "mistral", answer=a)
    r = backend.render(conv)
    text = expected_text(name, q)
    if name in TEXT:
        sep = "" if text.endswith("\n") else " "
        expected = [1, *raw_sp.encode(text + sep + a.strip()), 2]
        assert r.text == text + sep + a.strip() + "</s>"
    else:
        req = ChatCompletionRequest(messages=_mc_messages(name, q, a.strip()))
        expected = list(mc[1].encode_chat_completion(req).tokens)
        # mistral-common's v1 format: prompt ids, then the answer's own encoding, then EOS
        assert expected == [1, *raw_sp.encode(text), *raw_sp.encode(a.strip()), 2]
        assert r.text == text + " " + a.strip() + "</s>"
    assert list(r.input_ids) == expected
    p = list(backend.render(conv.without_answer()).input_ids)
    assert list(r.input_ids[: len(p)]) == p
    assert list(r.labels) == [-100] * len(p) + list(r.input_ids[len(p) :])
    assert r.input_ids.count(1) == 1 and r.input_ids[-1] == 2
    assert backend.decode([t for t in r.labels if t != -100]).strip() == a.strip()


def test_empty_system_is_dropped_like_mistral_common(backend, mc):
    with_empty = backend.render(Conversation("chat", "Hi", system=""))
    assert with_empty.text == "[INST] Hi [/INST]"
    assert list(with_empty.input_ids) == list(
        mc[0].encode_chat_completion(ChatCompletionRequest(messages=[SystemMessage(content=""), UserMessage(content="Hi")])).tokens
    )


def test_tokenizer_option_gives_the_same_ids(backend):
    if not SHARED_TOKENIZER.is_file():
        pytest.skip("shared Mistral tokenizer not found")
    other = create_backend(BackendSpec(kind="mistral", model="m", tokenizer=str(SHARED_TOKENIZER)))
    conv = BUILTIN["chat:llama"].apply(QUERIES[0][0], "mistral", answer=QUERIES[0][1])
    assert other.render(conv) == backend.render(conv)


def test_hf_llama_tokenizer_disagrees_at_text_start():
    """Why ids come from mistral-common: a HF `LlamaTokenizer` built from the same file does not tokenize the start of
    `[INST] ...` as sentencepiece (the reference) does (recorded in templates.md). Asserted, not skipped: when a
    transformers release agrees, this fails, and templates.md and this test must be updated together."""
    transformers = pytest.importorskip("transformers")
    spm = pytest.importorskip("sentencepiece")
    if not SHARED_TOKENIZER.is_file():
        pytest.skip("shared Mistral tokenizer not found")
    reference = spm.SentencePieceProcessor(model_file=str(SHARED_TOKENIZER)).encode("[INST] Hello [/INST]")
    assert reference[:3] == [733, 16289, 28793]  # `▁[`, `INST`, `]`: the ids mistral-common renders (see above)
    try:
        ids = list(transformers.LlamaTokenizer(vocab_file=str(SHARED_TOKENIZER))("[INST] Hello [/INST]")["input_ids"])
    except Exception:  # noqa: BLE001 — failing to build one at all is a disagreement too
        ids = []
    assert [i for i in ids if i != 1][:3] != reference[:3]


def test_gsm8k_rows_keep_the_prefix_property(backend, shared):
    rows = [json.loads(line) for line in (shared / "data/gsm8k/train.jsonl").read_text().splitlines()[:200]]
    for name, tpl in BUILTIN.items():
        for row in rows:
            r = backend.render(tpl.apply(row["question"], "mistral", answer=row["answer"]))
            assert r.labels[-1] == 2 and r.labels[0] == -100, name


def test_missing_tokenizer_file_is_a_one_line_error(tmp_path):
    b = create_backend(BackendSpec(kind="mistral", model="m", tokenizer=str(tmp_path / "nope.model")))
    with pytest.raises(PtstError) as e:
        b.render(Conversation("chat", "Hi"))
    assert "tokenizer" in str(e.value) and "\n" not in str(e.value)

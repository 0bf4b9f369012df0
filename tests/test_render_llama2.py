"""Golden tests of the Llama 2 renderer: the paper's exact text and Meta's exact token ids, for every built-in template.

Expected strings are typed here from the reference (`shared/reference/templates.md`), not produced by the code under
test; expected ids come from SentencePiece run directly on Meta's tokenizer.model with Meta's formulas.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptst.backends.base import BackendSpec, create_backend
from ptst.conversation import Conversation
from ptst.errors import PtstError
from ptst.templates import BUILTIN

spm = pytest.importorskip("sentencepiece")

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "llama2" / "tokenizer.model"
CHAT_TEMPLATE = REPO.parent / "shared" / "data" / "tokenizers" / "llama2" / "chat_template.json"
pytestmark = pytest.mark.skipif(not TOKENIZER.is_file(), reason=f"Llama 2 tokenizer not found at {TOKENIZER}")

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


def sys_block(s: str) -> str:
    return f"<<SYS>>\n{s}\n<</SYS>>\n\n"


# name -> (expected prompt text with {q}, the chat user turn *as Meta's encoder sees it* or None for text mode)
EXPECTED: dict[str, str] = {
    "text:vanilla": "Question: {q}\nAnswer:",
    "text:alpaca": ALPACA + "\n\n### Instruction:\n{q}\n\n### Response:\n",
    "chat:vanilla": "[INST] Question: {q} [/INST]",
    "chat:alpaca": "[INST] " + sys_block(ALPACA) + "### Instruction:\n{q}\n\n### Response:\n [/INST]",
    "chat:llama": "[INST] " + sys_block(LLAMA_SYSTEM) + "Question: {q} [/INST]",
    "chat:llama-short": "[INST] " + sys_block(LLAMA_SYSTEM_SHORT) + "Question: {q} [/INST]",
    "chat:mpt": "[INST] " + sys_block(MPT_SYSTEM) + "Question: {q} [/INST]",
    "chat:mistral": "[INST] " + sys_block(MISTRAL_SYSTEM) + "Question: {q} [/INST]",
    "chat:safe": "[INST] " + sys_block(LLAMA_SYSTEM) + "Question: {q} [/INST]",  # Llama's own safety prompt
    # Self-Reminder's source (jailbreak_w_defense.py:20, 35-37): the whole `PREFIX\n{q}\n Remember...!` is the user turn
    "chat:self-reminder": "[INST] " + SELF_REMINDER_PREFIX + "\n{q}" + SELF_REMINDER_SUFFIX + " [/INST]",
}
# `@inst-sys` templates render on Llama 2 exactly as the template they derive from (the block is Llama's own); only
# templates with a system prompt have one.
NO_SYSTEM = {"chat:vanilla", "chat:self-reminder"}
EXPECTED.update({n + "@inst-sys": EXPECTED[n] for n in list(EXPECTED) if n.startswith("chat:") and n not in NO_SYSTEM})
MULTI_TURN = {"chat:icd"}  # example turns: tests/test_template_turns.py



@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(TOKENIZER))


@pytest.fixture(scope="module")
def backend():
    return create_backend(BackendSpec(kind="llama2", model="meta-llama/Llama-2-7b-chat-hf", tokenizer=str(TOKENIZER)))


def test_every_builtin_template_is_covered():
    assert set(EXPECTED) | MULTI_TURN == set(BUILTIN)


def test_known_marker_ids(sp):
    assert sp.encode("[INST]") == [518, 25580, 29962]
    assert sp.encode("[/INST]") == [518, 29914, 25580, 29962]
    assert (sp.bos_id(), sp.eos_id()) == (1, 2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("qi", range(len(QUERIES)))
def test_prompt_text_and_ids(backend, sp, name, qi):
    q, _ = QUERIES[qi]
    r = backend.render(BUILTIN[name].apply(q, "llama2"))
    expected = EXPECTED[name].replace("{q}", q)
    assert r.text == expected
    assert list(r.input_ids) == [1, *sp.encode(expected)]
    assert r.labels is None
    if name.startswith("chat:"):
        assert list(r.input_ids[1:4]) == [518, 25580, 29962]
        assert list(r.input_ids[-4:]) == [518, 29914, 25580, 29962]


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("qi", range(len(QUERIES)))
def test_training_ids_follow_meta_formula(backend, sp, name, qi):
    q, a = QUERIES[qi]
    conv = BUILTIN[name].apply(q, "llama2", answer=a)
    r = backend.render(conv)
    prompt = EXPECTED[name].replace("{q}", q)
    if name.startswith("chat:"):
        # llama/generation.py chat_completion: BOS + encode(f"{B_INST} {user} {E_INST} {answer.strip()} ") + EOS, the
        # system block inside the user turn; `prompt` already is f"{B_INST} {user} {E_INST}".
        expected_ids = [1, *sp.encode(f"{prompt} {a.strip()} "), 2]
        assert r.text == f"{prompt} {a.strip()} </s>"
    else:
        sep = "" if prompt.endswith("\n") else " "
        expected_ids = [1, *sp.encode(prompt + sep + a.strip()), 2]
        assert r.text == prompt + sep + a.strip() + "</s>"
    assert list(r.input_ids) == expected_ids
    # prefix property and exact label mask
    p = list(backend.render(conv.without_answer()).input_ids)
    assert list(r.input_ids[: len(p)]) == p
    assert list(r.labels) == [-100] * len(p) + list(r.input_ids[len(p) :])
    assert r.input_ids.count(1) == 1 and r.input_ids[-1] == 2 and r.labels[-1] == 2
    # the supervised tokens decode to the answer
    assert sp.decode([t for t in r.labels if t not in (-100, 2)]).strip() == a.strip()


def _jinja(messages: list[dict[str, str]]) -> str:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()

    def raise_exception(msg: str) -> None:
        raise ValueError(msg)

    tpl = env.from_string(json.loads(CHAT_TEMPLATE.read_text())["chat_template"])
    return tpl.render(messages=messages, bos_token="<s>", eos_token="</s>", raise_exception=raise_exception)


@pytest.mark.parametrize("name", ["chat:vanilla", "chat:llama", "chat:llama-short", "chat:mpt", "chat:mistral", "chat:safe"])
def test_chat_text_matches_hf_chat_template(backend, name):
    """Meta's HF chat template (jinja) gives the same text, with `<s>` where we put the BOS id."""
    q, a = QUERIES[0]
    conv = BUILTIN[name].apply(q, "llama2", answer=a)
    msgs = ([{"role": "system", "content": conv.system}] if conv.system is not None else []) + [
        {"role": "user", "content": conv.user}
    ]
    assert _jinja(msgs) == "<s>" + backend.render(conv.without_answer()).text
    assert _jinja(msgs + [{"role": "assistant", "content": a}]) == "<s>" + backend.render(conv).text


def test_chat_alpaca_keeps_the_papers_unstripped_newline(backend):
    """The paper's prompt_utils does not strip the user turn; the HF template does. We follow the paper."""
    q, _ = QUERIES[0]
    conv = BUILTIN["chat:alpaca"].apply(q, "llama2")
    hf = _jinja([{"role": "system", "content": conv.system}, {"role": "user", "content": conv.user}])
    ours = "<s>" + backend.render(conv).text
    assert ours.endswith("### Response:\n [/INST]") and hf.endswith("### Response: [/INST]")
    assert ours.replace("\n [/INST]", " [/INST]") == hf


def test_gsm8k_rows_keep_the_prefix_property(backend, shared):
    """Real data: the first 300 GSM8K training rows in every template tokenise with a clean answer boundary."""
    rows = [json.loads(line) for line in (shared / "data/gsm8k/train.jsonl").read_text().splitlines()[:300]]
    for name, tpl in BUILTIN.items():
        for row in rows:
            r = backend.render(tpl.apply(row["question"], "llama2", answer=row["answer"]))
            n_prompt = sum(1 for t in r.labels if t == -100)
            assert n_prompt >= 5 and r.labels[-1] == 2, name


def test_empty_system_prompt_is_an_empty_block(backend, sp):
    conv = Conversation("chat", "Hi", system="")
    assert backend.render(conv).text == "[INST] <<SYS>>\n\n<</SYS>>\n\nHi [/INST]"


def test_text_template_ending_in_a_space_is_a_hard_error(backend):
    """`Answer: ` + `Paris` re-tokenises the trailing space with the answer: the prompt is no longer a prefix."""
    conv = Conversation("text", "Question: capital of France?\nAnswer: ", answer="Paris", template="custom", query="capital")
    with pytest.raises(PtstError) as e:
        backend.render(conv)
    msg = str(e.value)
    assert "not a prefix" in msg and "custom" in msg and "\n" not in msg


def test_empty_answer_is_a_hard_error(backend):
    with pytest.raises(PtstError, match="answer is empty"):
        backend.render(Conversation("chat", "Q", answer="   ", template="chat:vanilla"))


def test_labels_checker_rejects_doubled_bos_and_missing_eos():
    from ptst.backends.local.render import TrainingFormError, supervised_labels

    ok = supervised_labels([1, 5, 6], [1, 5, 6, 7, 2], bos_id=1, eos_id=2, what="x")
    assert ok == [-100, -100, -100, 7, 2]
    with pytest.raises(TrainingFormError, match="BOS is doubled"):
        supervised_labels([1, 1, 5], [1, 1, 5, 7, 2], bos_id=1, eos_id=2, what="x")
    with pytest.raises(TrainingFormError, match="EOS"):
        supervised_labels([1, 5], [1, 5, 7], bos_id=1, eos_id=2, what="x")
    with pytest.raises(TrainingFormError, match="prefix"):
        supervised_labels([1, 5, 6], [1, 5, 8, 7, 2], bos_id=1, eos_id=2, what="x")
    with pytest.raises(TrainingFormError, match="BOS"):
        supervised_labels([5], [5, 7, 2], bos_id=1, eos_id=2, what="x")


def test_missing_tokenizer_is_a_one_line_error(tmp_path):
    b = create_backend(BackendSpec(kind="llama2", model=str(tmp_path / "nowhere")))
    with pytest.raises(PtstError) as e:
        b.render(Conversation("chat", "Hi"))
    assert "tokenizer" in str(e.value) and "\n" not in str(e.value)


def test_tokenizer_found_in_model_directory(tmp_path, sp):
    (tmp_path / "tokenizer.model").write_bytes(TOKENIZER.read_bytes())
    b = create_backend(BackendSpec(kind="llama2", model=str(tmp_path)))
    assert list(b.render(Conversation("chat", "Hi")).input_ids) == [1, *sp.encode("[INST] Hi [/INST]")]


def test_importing_backends_loads_no_heavy_library():
    code = (
        "import sys, ptst.backends.llama2, ptst.backends.mistral, ptst.backends.local\n"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'sentencepiece', 'mistral_common') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""`kind: hf` on tiny offline chat models (ChatML/Qwen2, Llama 3, Gemma formats; see hf_chat_models.py).

Covers: ids equal each format written out by hand and encoded, token for token; labels cover exactly the answer and
the template's end-of-turn token; system folding for a template without a system role (Gemma raises, another drops it) with a note;
stop tokens and where generation really stops; text-mode templates with the tokenizer's BOS; a template whose
generation prompt is not a prefix is a one-line user error naming the model; the fingerprint follows the template;
preflight; `ptst render --backend hf`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from hf_chat_models import CHATML_TEMPLATE, FORMATS, make_tiny_chat_model, rig_bigram

from ptst.backends.base import BackendSpec, GenerationConfig, create_backend
from ptst.backends.hf_chat import FOLD_NOTE
from ptst.cli import main
from ptst.errors import DataError
from ptst.templates import BUILTIN, strings

FORMAT_NAMES = sorted(FORMATS)
QUERY, ANSWER = "How do I bake a cake?", "Mix flour, eggs and sugar, then bake it."
# Each format's end-of-turn token (the loss covers the answer and it) and what the template writes after it (no loss).
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}
AFTER_END_OF_TURN = {"chatml": "\n", "llama3": "", "gemma": "\n"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-chat")
    return {fmt: make_tiny_chat_model(root / fmt, fmt) for fmt in FORMAT_NAMES}


def hf(model: Path, **options):  # type: ignore[no-untyped-def]
    return create_backend(BackendSpec(kind="hf", model=str(model), **options))


def tokenizer(model: Path):  # type: ignore[no-untyped-def]
    return transformers.AutoTokenizer.from_pretrained(str(model), local_files_only=True)


def expected_messages(fmt: str, system: str | None, user: str) -> list[dict[str, str]]:
    """Written out independently of the backend: Gemma gets the system text folded into the user turn."""
    if system is None:
        return [{"role": "user", "content": user}]
    if fmt == "gemma":
        return [{"role": "user", "content": system + "\n\n" + user}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def handwritten(fmt: str, system: str | None, user: str, answer: str | None = None) -> str:
    """Each format's text written out by hand from its public description (hf_chat_models.py's docstring), not
    through the chat template: the backend's ids must equal this text encoded by the tokenizer."""
    if fmt == "chatml":
        head = "<|im_start|>system\n" + ("You are a helpful assistant." if system is None else system) + "<|im_end|>\n"
        head += f"<|im_start|>user\n{user}<|im_end|>\n"
        return head + (f"<|im_start|>assistant\n{answer}<|im_end|>\n" if answer is not None else "<|im_start|>assistant\n")
    if fmt == "llama3":
        head = "<|begin_of_text|>"
        if system is not None:
            head += f"<|start_header_id|>system<|end_header_id|>\n\n{system.strip()}<|eot_id|>"
        head += f"<|start_header_id|>user<|end_header_id|>\n\n{user.strip()}<|eot_id|>"
        tail = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        return head + (tail + answer.strip() + "<|eot_id|>" if answer is not None else tail)
    text = user if system is None else system + "\n\n" + user  # Gemma: no system role, folded
    head = f"<bos><start_of_turn>user\n{text.strip()}<end_of_turn>\n"
    return head + (f"<start_of_turn>model\n{answer}<end_of_turn>\n" if answer is not None else "<start_of_turn>model\n")


def encode(tok, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    return list(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("template", ["chat:vanilla", "chat:alpaca", "chat:llama"])
def test_ids_equal_the_handwritten_format(models, fmt, template):
    b, tok = hf(models[fmt]), tokenizer(models[fmt])
    t = BUILTIN[template]
    user = t.user.replace("{query}", QUERY)
    msgs = expected_messages(fmt, t.system, user)
    prompt_text = handwritten(fmt, t.system, user)
    r = b.render(t.apply(QUERY, "hf"))
    assert list(r.input_ids) == encode(tok, prompt_text) and r.labels is None
    assert r.text == prompt_text
    assert list(r.messages) == msgs
    rt = b.render(t.apply(QUERY, "hf", answer="  " + ANSWER + "\n"))  # the answer is trained stripped
    assert list(rt.input_ids) == encode(tok, handwritten(fmt, t.system, user, ANSWER))
    assert list(rt.messages) == [*msgs, {"role": "assistant", "content": ANSWER}]


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_labels_cover_exactly_the_answer_and_end_of_turn(models, fmt):
    b, tok = hf(models[fmt]), tokenizer(models[fmt])
    r = b.render(BUILTIN["chat:llama"].apply(QUERY, "hf", answer=ANSWER))
    ids, labels = list(r.input_ids), list(r.labels)
    n = labels.index(next(x for x in labels if x != -100))
    supervised = [x for x in labels if x != -100]
    assert len(labels) == len(ids) and labels[:n] == [-100] * n
    assert supervised == labels[n : n + len(supervised)] == ids[n : n + len(supervised)]
    assert supervised == encode(tok, ANSWER + END_OF_TURN[fmt])  # the end-of-turn token, not what follows it
    assert tok.decode(ids[n + len(supervised) :]) == AFTER_END_OF_TURN[fmt]
    assert tok.decode(ids[:n]) == b.render(BUILTIN["chat:llama"].apply(QUERY, "hf")).text


@pytest.mark.parametrize(
    ("fmt", "stops"),
    [
        ("chatml", ["<|im_end|>"]),
        ("llama3", ["<|eot_id|>", "<|end_of_text|>"]),
        ("gemma", ["<end_of_turn>", "<eos>"]),
    ],
)
def test_stop_tokens_start_with_the_end_of_turn_token(models, fmt, stops):
    b, tok = hf(models[fmt]), tokenizer(models[fmt])
    assert b.stop_token_ids() == tuple(tok.convert_tokens_to_ids(stops))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_generation_stops_at_the_end_of_turn_token(models, fmt, tmp_path):
    """A rigged model answers `x` then the end-of-turn token, forever: only stopping there gives exactly 'x'.
    (Llama 3's EOS is <|end_of_text|>: stopping on EOS alone would give 'xxxxxxxx'.)"""
    model = tmp_path / fmt
    shutil.copytree(models[fmt], model)
    tok = tokenizer(model)
    x = tok("x", add_special_tokens=False)["input_ids"]
    assert len(x) == 1
    rig_bigram(model, x[0], tok.convert_tokens_to_ids(FORMATS[fmt]["end_of_turn"]))
    b = hf(model)
    prompts = [BUILTIN["chat:vanilla"].apply(QUERY, "hf"), BUILTIN["chat:llama"].apply("Hi", "hf")]
    assert b.generate(b.base_model(), prompts, GenerationConfig(max_new_tokens=8)) == ["x", "x"]


def test_gemma_folds_the_system_prompt_and_says_so(models):
    b = hf(models["gemma"])
    conv = BUILTIN["chat:llama"].apply(QUERY, "hf")
    r = b.render(conv)
    assert [m["role"] for m in r.messages] == ["user"]
    assert r.messages[0]["content"] == strings()["LLAMA_SYSTEM"] + "\n\nQuestion: " + QUERY
    assert r.text.startswith("<bos><start_of_turn>user\n" + strings()["LLAMA_SYSTEM"] + "\n\nQuestion: ")
    assert b.base_model().meta["notes"] == [FOLD_NOTE]
    for fmt in ("chatml", "llama3"):
        assert "notes" not in hf(models[fmt]).base_model().meta


def test_a_template_that_drops_the_system_message_is_folded_too(models, tmp_path):
    model = tmp_path / "drops-system"
    shutil.copytree(models["chatml"], model)
    tok = tokenizer(model)
    tok.chat_template = CHATML_TEMPLATE.replace("{%- for m in messages -%}", "{%- for m in messages if m['role'] != 'system' -%}")
    tok.save_pretrained(model)
    b = hf(model)
    r = b.render(BUILTIN["chat:alpaca"].apply(QUERY, "hf"))
    assert strings()["ALPACA_PREAMBLE"] + "\n\n### Instruction:\n" + QUERY in r.text
    assert b.base_model().meta["notes"] == [FOLD_NOTE]


def test_a_template_error_other_than_refusing_the_system_role_surfaces(models, tmp_path, capsys):
    """Only the template's explicit refusal of the system role folds the system prompt; a template that fails for
    another reason (here: a filter it does not have, and a raise_exception about something else) is a user error."""
    for name, broken in [
        ("unknown-filter", CHATML_TEMPLATE.replace("m['content']", "(m['content'] | no_such_filter)")),
        ("other-raise", "{{- raise_exception('Conversation roles must alternate user/assistant') -}}" + CHATML_TEMPLATE),
    ]:
        model = tmp_path / name
        shutil.copytree(models["chatml"], model)
        tok = tokenizer(model)
        tok.chat_template = broken
        tok.save_pretrained(model)
        b = hf(model)
        with pytest.raises(Exception, match=rf"model {model}: its chat template fails on a system \+ user") as info:
            b.render(BUILTIN["chat:llama"].apply(QUERY, "hf"))
        assert getattr(info.value, "exit_code", None) == 2
    args = ["render", "--backend", "hf", "--model", str(tmp_path / "other-raise"), "--template", "chat:llama",
            "--query", "Q", "--json"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Conversation roles must alternate" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("fmt", "bos"), [("chatml", None), ("llama3", "<|begin_of_text|>"), ("gemma", "<bos>")])
@pytest.mark.parametrize("template", ["text:vanilla", "text:alpaca"])
def test_text_mode_is_raw_text_with_the_tokenizers_bos(models, fmt, bos, template):
    b, tok = hf(models[fmt]), tokenizer(models[fmt])
    conv = BUILTIN[template].apply(QUERY, "hf")
    r = b.render(conv)
    assert r.text == conv.user and r.messages is None
    body = tok(conv.user, add_special_tokens=False)["input_ids"]
    head = [] if bos is None else [tok.convert_tokens_to_ids(bos)]
    assert list(r.input_ids) == head + body
    rt = b.render(BUILTIN[template].apply(QUERY, "hf", answer=ANSWER))
    ids, labels = list(rt.input_ids), list(rt.labels)
    n = len(r.input_ids)
    assert ids[:n] == list(r.input_ids) and labels[:n] == [-100] * n and labels[n:] == ids[n:]
    assert ids[-1] == tok.eos_token_id
    sep = "" if conv.user.endswith("\n") else " "
    assert tok.decode(ids[n:]) == sep + ANSWER + tok.eos_token


def test_generation_prompt_that_is_not_a_prefix_is_a_user_error(models, tmp_path, capsys):
    """A template whose generation prompt differs from how it writes the assistant turn cannot be masked by prefix."""
    model = tmp_path / "bad-template"
    shutil.copytree(models["chatml"], model)
    tok = tokenizer(model)
    tok.chat_template = CHATML_TEMPLATE.replace("'<|im_start|>assistant\\n'", "'<|im_start|>model\\n'")
    tok.save_pretrained(model)
    b = hf(model)
    b.render(BUILTIN["chat:vanilla"].apply(QUERY, "hf"))  # prompts alone are fine
    with pytest.raises(DataError, match=rf"model {model}.*not a token prefix"):
        b.render(BUILTIN["chat:vanilla"].apply(QUERY, "hf", answer=ANSWER))
    args = ["render", "--backend", "hf", "--model", str(model), "--template", "chat:vanilla", "--query", "Q"]
    assert main([*args, "--answer", "A", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model ") and "not a token prefix" in err and len(err.strip().splitlines()) == 1


def test_fingerprint_follows_the_chat_template(models, tmp_path):
    model = tmp_path / "retemplated"
    shutil.copytree(models["chatml"], model)
    before = hf(model).identity()
    assert hf(model).identity() == before  # stable
    tok = tokenizer(model)
    tok.chat_template = CHATML_TEMPLATE.replace("You are a helpful assistant.", "You are a careful assistant.")
    tok.save_pretrained(model)
    after = hf(model).identity()
    assert after["tokenizer_sha256"] != before["tokenizer_sha256"]
    assert {k: v for k, v in after.items() if k != "tokenizer_sha256"} == {
        k: v for k, v in before.items() if k != "tokenizer_sha256"
    }


def test_preflight(models, tmp_path):
    assert hf(models["llama3"]).preflight() == []
    missing = hf(tmp_path / "nowhere").preflight()
    assert len(missing) == 1 and "not a local directory nor in the local Hugging Face cache" in missing[0]
    assert hf(tmp_path / "nowhere", download=True).preflight() == []  # fetched at run time, not at validation
    no_template = tmp_path / "no-template"
    shutil.copytree(models["chatml"], no_template)
    (no_template / "chat_template.jinja").unlink()
    (problem,) = hf(no_template).preflight()
    assert problem.startswith(f"model {no_template}: its tokenizer has no chat template")
    empty = tmp_path / "empty"
    empty.mkdir()
    problems = hf(empty).preflight()
    assert len(problems) == 2 and "no config.json" in problems[0] and "tokenizer" in problems[1]


def test_cli_render_json(models, capsys):
    model = models["llama3"]
    args = ["render", "--backend", "hf", "--model", str(model), "--template", "chat:llama", "--query", QUERY]
    assert main([*args, "--answer", ANSWER, "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj) == {"text", "messages", "input_ids", "labels"}
    tok = tokenizer(model)
    msgs = expected_messages("llama3", strings()["LLAMA_SYSTEM"], "Question: " + QUERY)
    full = [*msgs, {"role": "assistant", "content": ANSWER}]
    assert obj["messages"] == full
    user = "Question: " + QUERY
    assert obj["input_ids"] == encode(tok, handwritten("llama3", strings()["LLAMA_SYSTEM"], user, ANSWER))
    assert obj["text"] == handwritten("llama3", strings()["LLAMA_SYSTEM"], user, ANSWER)
    n = obj["labels"].count(-100)
    assert obj["labels"][n:] == obj["input_ids"][n:] and tok.decode(obj["input_ids"][n:]) == ANSWER + "<|eot_id|>"
    assert main(args) == 0  # plain: the prompt text, generation prompt included
    assert capsys.readouterr().out == handwritten("llama3", strings()["LLAMA_SYSTEM"], user) + "\n"


def test_cli_render_hf_needs_a_model(capsys, tmp_path):
    assert main(["render", "--backend", "hf", "--template", "chat:vanilla", "--query", "Q"]) == 2
    assert "--backend hf needs --model" in capsys.readouterr().err
    assert main(["render", "--backend", "hf", "--model", str(tmp_path / "x"), "--template", "chat:vanilla", "--query", "Q"]) == 2
    assert "not a local directory" in capsys.readouterr().err


def test_tokenizer_option_points_at_another_folder(models, tmp_path):
    """Weights in one folder, tokenizer + chat template in another (`tokenizer: DIR`)."""
    weights = tmp_path / "weights-only"
    shutil.copytree(models["llama3"], weights)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (weights / name).unlink()
    assert "tokenizer" in " ".join(hf(weights).preflight())
    b = hf(weights, tokenizer=str(models["llama3"]))
    assert b.preflight() == []
    conv = BUILTIN["chat:vanilla"].apply(QUERY, "hf", answer=ANSWER)
    assert b.render(conv) == hf(models["llama3"]).render(conv)
    assert hf(weights, tokenizer=str(tmp_path / "missing")).preflight() == [
        f"tokenizer: {tmp_path / 'missing'} is not a directory; point it at the tokenizer's folder"
    ]

"""Family backends refuse models they cannot render, and Mistral picks the tokenizer version its checkpoint ships.

Foreign checkpoints are built in tmp: a GPT-2-style byte-level BPE tokenizer (tokenizers library), ChatML chat
templates, another model_type, and the other family's real SentencePiece file. Mistral's v3 and tekken files are the
ones mistral-common ships inside its package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("sentencepiece")
pytest.importorskip("mistral_common")

from ptst.backends.base import BackendSpec, create_backend
from ptst.backends.local.family import ForeignModel
from ptst.backends.mistral import pick_tokenizer_file
from ptst.cli import main
from ptst.conversation import Conversation

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO.parent / "shared" / "data" / "tokenizers"
LLAMA_TOK = TOKENIZERS / "llama2" / "tokenizer.model"
MISTRAL_TOK = TOKENIZERS / "mistral" / "tokenizer.model"
pytestmark = pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared tokenizers not found")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def mistral_data() -> Path:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return Path(MistralTokenizer._data_path())


def checkpoint(path: Path, *, model_type: str, vocab: int, files: dict[str, Path] | None = None,
               tokenizer_config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": vocab}))
    for name, src in (files or {}).items():
        shutil.copyfile(src, path / name)
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return path


def gpt2_style_checkpoint(path: Path) -> Path:
    """A tiny byte-level BPE tokenizer.json with GPT-2's special token and a ChatML template, as a hub model ships."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(["hello world, how are you?"] * 20, trainer=trainer)
    checkpoint(path, model_type="gpt2", vocab=tok.get_vocab_size(),
               tokenizer_config={"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "chat_template": CHATML})
    tok.save(str(path / "tokenizer.json"))
    return path


def backend(kind: str, model: Path | str, **options):  # type: ignore[no-untyped-def]
    return create_backend(BackendSpec(kind=kind, model=str(model), **options))


def refused(kind: str, model: Path | str, **options) -> str:  # type: ignore[no-untyped-def]
    b = backend(kind, model, **options)
    with pytest.raises(ForeignModel) as e:
        b.render(Conversation("chat", "Hi"))
    msg = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in msg
    assert str(model) in msg and "kind: hf" in msg
    assert msg in b.preflight()  # validate reports the same one line
    return msg


# --------------------------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama2", "mistral"])
def test_gpt2_style_bpe_checkpoint_is_refused(kind, tmp_path):
    model = gpt2_style_checkpoint(tmp_path / "gpt2ish")
    msg = refused(kind, model)
    assert "tokenizer.json" in msg or "model_type" in msg


def test_llama2_refuses_another_model_type(tmp_path):
    model = checkpoint(tmp_path / "qwen", model_type="qwen2", vocab=32000, files={"tokenizer.model": LLAMA_TOK})
    assert "model_type is 'qwen2'" in refused("llama2", model)


def test_llama2_refuses_a_chatml_template_and_foreign_special_tokens(tmp_path):
    model = checkpoint(tmp_path / "chatml", model_type="llama", vocab=32000, files={"tokenizer.model": LLAMA_TOK},
                       tokenizer_config={"chat_template": CHATML})
    assert "chat template has no '[INST]'" in refused("llama2", model)
    model2 = checkpoint(tmp_path / "eos", model_type="llama", vocab=32000, files={"tokenizer.model": LLAMA_TOK},
                        tokenizer_config={"eos_token": {"content": "<|im_end|>"}})
    assert "eos_token is '<|im_end|>'" in refused("llama2", model2)


def test_llama2_refuses_mistrals_tokenizer_and_mistral_refuses_llamas(tmp_path):
    msg = refused("llama2", tmp_path / "none", tokenizer=str(MISTRAL_TOK))
    assert "encodes [INST] as [733, 16289, 28793]" in msg
    model = checkpoint(tmp_path / "llama-in-mistral", model_type="mistral", vocab=32000,
                       files={"tokenizer.model": LLAMA_TOK})
    assert "encodes [INST] as [518, 25580, 29962]" in refused("mistral", model)


def test_mistral_refuses_a_llama_model_type_and_vocab_mismatch(tmp_path):
    model = checkpoint(tmp_path / "llama", model_type="llama", vocab=32000)
    assert "model_type is 'llama'" in refused("mistral", model)
    wide = checkpoint(tmp_path / "wide", model_type="mistral", vocab=32768)  # bundled v1 has 32,000
    assert "vocab_size 32768" in refused("mistral", wide)


def test_the_families_own_checkpoints_pass(tmp_path):
    """Meta's tokenizer with Llama-2-chat's template, Mistral v1 with v0.1's template: accepted, ids as before."""
    llama_tpl = json.loads((TOKENIZERS / "llama2" / "chat_template.json").read_text())["chat_template"]
    llama = checkpoint(tmp_path / "llama", model_type="llama", vocab=32000, files={"tokenizer.model": LLAMA_TOK},
                       tokenizer_config={"bos_token": "<s>", "eos_token": "</s>", "chat_template": llama_tpl})
    b = backend("llama2", llama)
    assert list(b.render(Conversation("chat", "Hi")).input_ids)[:4] == [1, 518, 25580, 29962]
    mistral_tpl = json.loads((TOKENIZERS / "mistral" / "chat_template_v0.1.json").read_text())["chat_template"]
    mistral = checkpoint(tmp_path / "mistral", model_type="mistral", vocab=32000,
                         files={"tokenizer.model": MISTRAL_TOK}, tokenizer_config={"chat_template": mistral_tpl})
    m = backend("mistral", mistral)
    assert list(m.render(Conversation("chat", "Hi")).input_ids)[:4] == [1, 733, 16289, 28793]
    # (no config.json: preflight reports the missing model files, nothing about the family)
    assert b.preflight() == [] and m.preflight() == []


def test_render_cli_refuses_a_tokenizer_of_another_family(capsys):
    args = ["render", "--template", "chat:vanilla", "--query", "Hi"]
    assert main([*args, "--backend", "llama2", "--tokenizer", str(MISTRAL_TOK)]) == 2
    assert main([*args, "--backend", "mistral", "--tokenizer", str(LLAMA_TOK)]) == 2
    err = capsys.readouterr().err
    assert err.count("kind: hf") == 2 and "Traceback" not in err
    assert main([*args, "--backend", "llama2", "--tokenizer", str(LLAMA_TOK)]) == 0


# --------------------------------------------------------------------------------------------------------------
# Mistral tokenizer versions
# --------------------------------------------------------------------------------------------------------------


def test_pick_follows_mistral_commons_rule():
    assert pick_tokenizer_file(["config.json", "tokenizer.model"]) == "tokenizer.model"  # v0.1 / v0.2
    assert pick_tokenizer_file(["tokenizer.json", "tokenizer.model", "tokenizer.model.v3"]) == "tokenizer.model.v3"
    assert pick_tokenizer_file(["tokenizer.model.v3", "tekken.json"]) == "tekken.json"
    assert pick_tokenizer_file(["tokenizer.json", "config.json"]) is None


def test_mistral_v03_checkpoint_gets_tokenizer_v3(tmp_path):
    data = mistral_data()
    model = checkpoint(tmp_path / "v03", model_type="mistral", vocab=32768, files={
        "tokenizer.model": MISTRAL_TOK, "tokenizer.model.v3": data / "mistral_instruct_tokenizer_240323.model.v3"})
    b = backend("mistral", model)
    assert b.tokenizer_version == "v3" and b.tokenizer_file == str(model / "tokenizer.model.v3")
    r = b.render(Conversation("chat", "Hi there", system="SYS"))
    assert list(r.input_ids)[:2] == [1, 3]  # BOS, then [INST] as a control token (v1 spells it as text)
    assert r.text == "[INST] SYS\n\nHi there[/INST]"
    t = b.render(Conversation("chat", "Hi there", answer="Yo man"))
    assert list(t.input_ids)[: len(b.prompt_ids(Conversation("chat", "Hi there")))] == b.prompt_ids(
        Conversation("chat", "Hi there"))
    assert t.text == "[INST] Hi there[/INST] Yo man</s>" and t.input_ids[-1] == 2
    assert b.plain_text(Conversation("chat", "Hi there")) == "[INST] Hi there[/INST]"


def test_mistral_tekken_checkpoint_gets_tekken(tmp_path):
    data = mistral_data()
    model = checkpoint(tmp_path / "nemo", model_type="mistral", vocab=131072,
                       files={"tekken.json": data / "tekken_240718.json"})
    b = backend("mistral", model)
    assert b.tokenizer_file == str(model / "tekken.json") and b.spm.n_words == 131072
    r = b.render(Conversation("chat", "Hi there"))
    assert r.text == "[INST]Hi there[/INST]" and list(r.input_ids)[:2] == [1, 3]
    assert b.decode(b.prompt_ids(Conversation("text", "hello world"))[1:]) == "hello world"


def test_mistral_without_tokenizer_files_uses_the_bundled_v1(tmp_path):
    model = checkpoint(tmp_path / "bare", model_type="mistral", vocab=32000)
    b = backend("mistral", model)
    assert b.tokenizer_file is None and b.tokenizer_version == "v1"
    assert b.plain_text(Conversation("chat", "Hi")) == "[INST] Hi [/INST]"


def test_text_of_spells_pieces_as_text():
    from ptst.backends.mistral import text_of

    assert text_of("<s>[INST]\u2581caf<0xC3><0xA9><0x0A>ok[/INST]") == "[INST] café\nok[/INST]"

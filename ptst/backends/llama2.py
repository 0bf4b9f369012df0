"""Llama 2-Chat: the paper's prompt text, byte for byte, and Meta's token ids, on the shared local engine (`local/`).

Text (the strings of the PTST paper's `prompt_utils.py`): chat mode is
`"[INST] " + ("<<SYS>>\\n" + system + "\\n<</SYS>>\\n\\n" if a system prompt is given) + user + " [/INST]"`, with no
stripping (so `chat:alpaca` keeps its `\\n [/INST]`); text mode is the user text as it is.

Token ids come from SentencePiece run directly on Meta's `tokenizer.model`, as Meta's reference `llama/tokenizer.py`
does (not from a transformers tokenizer, whose special-token handling has changed between versions):
* prompt: `BOS + encode(text)`; a template's example turns come first, each a finished pair as Meta's
  `chat_completion` encodes it (`BOS + encode(f"[INST] {user} [/INST] {answer} ") + EOS`), the system block in the
  first user turn;
* chat training form, Meta's `chat_completion` encoding of a user/assistant pair:
  `BOS + encode(f"[INST] {user} [/INST] {answer.strip()} ") + EOS` (system block inside the user turn);
* text training form (ptst's choice; the paper released none): `BOS + encode(prompt + sep + answer.strip()) + EOS`
  with `sep` a space unless the prompt ends in whitespace (`text:alpaca` ends in a newline), which keeps the prompt's
  own tokens a prefix of the training tokens — checked for every example, a hard error otherwise.
The rendered training text shows EOS as `</s>`; BOS is not part of any text (it is the first input id).

A model of another family is refused (exit 2, pointing to `kind: hf`): the tokenizer must be Meta's (32,000 pieces,
`<s>`/`</s>` at 1/2, the chat markers split as Meta's file splits them) and the checkpoint's config.json and
tokenizer_config.json, where present, must say Llama with a `[INST]`/`<<SYS>>` chat template (`local/family.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from ptst.backends.local import LocalBackend
from ptst.backends.local.family import FamilyRules, model_file, refuse, sentencepiece_model
from ptst.backends.local.render import text_separator
from ptst.conversation import Conversation
from ptst.digests import file_sha256
from ptst.errors import UsageError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
EOS_TEXT = "</s>"
LLAMA2 = FamilyRules(
    kind="llama2", name="Llama 2", model_types=frozenset({"llama"}), template_needs=("[INST]", "<<SYS>>")
)
# Meta's Llama 2 tokenizer.model: its size, special pieces, and how it splits the chat markers (the ids the
# paper's format trains on). Another SentencePiece model (Mistral's, Llama 1 derivatives with added tokens) differs.
LLAMA2_VOCAB = 32000
LLAMA2_SPECIALS = {0: "<unk>", 1: "<s>", 2: "</s>"}
LLAMA2_MARKERS = {"[INST]": [518, 25580, 29962], "[/INST]": [518, 29914, 25580, 29962]}


def _bodies(conv: Conversation) -> list[str]:
    """The user turns inside `[INST] ... [/INST]`, example turns first; the system block opens the first."""
    users = [u for u, _ in conv.examples] + [conv.user]
    if conv.system is not None:
        users[0] = B_SYS + conv.system + E_SYS + users[0]
    return users


def example_turns(conv: Conversation) -> list[str]:
    """Each example turn as Meta's `chat_completion` encodes a finished pair: `[INST] {user} [/INST] {answer} `
    (wrapped in BOS ... EOS as tokens, shown as `<s>`/`</s>` in text)."""
    return [f"{B_INST} {u} {E_INST} {a.strip()} " for u, (_, a) in zip(_bodies(conv)[:-1], conv.examples, strict=True)]


def last_turn(conv: Conversation) -> str:
    """The prompt's final `[INST] ... [/INST]` (the whole prompt text without example turns)."""
    if conv.mode == "text":
        return conv.user
    return f"{B_INST} {_bodies(conv)[-1]} {E_INST}"


def prompt_text(conv: Conversation) -> str:
    """The exact prompt text the model sees (after the BOS token); example turns end in `</s><s>`."""
    return "".join(t + EOS_TEXT + "<s>" for t in example_turns(conv)) + last_turn(conv)


def training_text(conv: Conversation, answer: str) -> str:
    """The text that is encoded for a training example (EOS is appended as a token, not as text)."""
    prompt = prompt_text(conv)
    if conv.mode == "text":
        return prompt + text_separator(prompt) + answer
    return f"{prompt} {answer} "


def _processor(path: str) -> Any:
    return sentencepiece_model(path, "llama2", "Meta's Llama 2 tokenizer.model")


def check_llama2_vocabulary(sp: Any, model: str, path: str) -> None:
    """Refuse a SentencePiece model that is not Meta's Llama 2 tokenizer."""
    n = int(sp.get_piece_size())
    if n != LLAMA2_VOCAB:
        raise refuse("llama2", "Llama 2", model, f"tokenizer {path} has {n} pieces, Llama 2's has {LLAMA2_VOCAB}")
    for i, piece in LLAMA2_SPECIALS.items():
        if sp.id_to_piece(i) != piece:
            raise refuse("llama2", "Llama 2", model, f"tokenizer {path} has {sp.id_to_piece(i)!r} at id {i}, not {piece!r}")
    for marker, ids in LLAMA2_MARKERS.items():
        got = list(sp.encode(marker))
        if got != ids:
            raise refuse("llama2", "Llama 2", model, f"tokenizer {path} encodes {marker} as {got}, Meta's as {ids}")


@cache
def _checked_processor(model: str, path: str) -> Any:
    sp = _processor(path)
    check_llama2_vocabulary(sp, model, path)
    LLAMA2.check_files(model, int(sp.get_piece_size()))
    return sp


def find_tokenizer(model: str, tokenizer: str | None) -> Path:
    """`tokenizer:` (a file, or a directory holding tokenizer.model), else the model directory, else the local HF
    cache of the model id. Never the network."""
    if tokenizer:
        p = Path(tokenizer).expanduser()
        if p.is_dir():
            p = p / "tokenizer.model"
        if not p.is_file():
            raise UsageError(f"tokenizer: {tokenizer} not found; point it at Llama 2's tokenizer.model")
        return p
    m = Path(model).expanduser()
    if (m / "tokenizer.model").is_file():
        return m / "tokenizer.model"
    if (m / "tokenizer.json").is_file() or (m / "tekken.json").is_file():
        raise refuse("llama2", "Llama 2", model, "it ships no SentencePiece tokenizer.model, only tokenizer.json or tekken.json")
    if not m.exists():
        hit = model_file(model, "tokenizer.model")
        if hit is not None:
            return hit
    raise UsageError(
        f"no tokenizer.model for llama2 model {model!r} (not in the model directory nor the local HF cache); "
        "set tokenizer: path/to/tokenizer.model in the backend entry (ptst render: --tokenizer)"
    )


class Backend(LocalBackend):
    kind: ClassVar[str] = "llama2"
    family: ClassVar[str] = "llama2"

    @property
    def tokenizer_path(self) -> Path:
        self.fetch_model()  # with `download: true`, the tokenizer comes with the model into the HF cache
        return find_tokenizer(self.spec.model, self.options.tokenizer)

    @property
    def sp(self) -> Any:
        return _checked_processor(self.spec.model, str(self.tokenizer_path))

    @property
    def bos_id(self) -> int:  # type: ignore[override]
        return int(self.sp.bos_id())

    @property
    def eos_id(self) -> int:  # type: ignore[override]
        return int(self.sp.eos_id())

    def tokenizer_fingerprint(self) -> str:
        return _sha(str(self.tokenizer_path))

    def prompt_text(self, conv: Conversation) -> str:
        return prompt_text(conv)

    def _example_ids(self, conv: Conversation) -> list[int]:
        """BOS + each example turn + EOS, then the BOS of the final turn (Meta's multi-turn encoding)."""
        ids = [self.bos_id]
        for turn in example_turns(conv):
            ids += [*self.sp.encode(turn), self.eos_id, self.bos_id]
        return ids

    def prompt_ids(self, conv: Conversation) -> list[int]:
        return [*self._example_ids(conv), *self.sp.encode(last_turn(conv))]

    def training_text(self, conv: Conversation, answer: str) -> str:
        return training_text(conv, answer) + EOS_TEXT

    def training_ids(self, conv: Conversation, answer: str) -> list[int]:
        last = last_turn(conv)
        text = last + text_separator(last) + answer if conv.mode == "text" else f"{last} {answer} "
        return [*self._example_ids(conv), *self.sp.encode(text), self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.sp.decode([i for i in ids if i != self.eos_id]))


@cache
def _sha(path: str) -> str:
    return file_sha256(path)[:16]

"""Llama 2-Chat: the paper's prompt text, byte for byte, and Meta's token ids, on the shared local engine (`local/`).

Text (the strings of the PTST paper's `prompt_utils.py`): chat mode is
`"[INST] " + ("<<SYS>>\\n" + system + "\\n<</SYS>>\\n\\n" if a system prompt is given) + user + " [/INST]"`, with no
stripping (so `chat:alpaca` keeps its `\\n [/INST]`); text mode is the user text as it is.

Token ids come from SentencePiece run directly on Meta's `tokenizer.model`, as Meta's reference `llama/tokenizer.py`
does (not from a transformers tokenizer, whose special-token handling has changed between versions):
* prompt: `BOS + encode(text)`;
* chat training form, Meta's `chat_completion` encoding of a user/assistant pair:
  `BOS + encode(f"[INST] {user} [/INST] {answer.strip()} ") + EOS` (system block inside the user turn);
* text training form (ptst's choice; the paper released none): `BOS + encode(prompt + sep + answer.strip()) + EOS`
  with `sep` a space unless the prompt ends in whitespace (`text:alpaca` ends in a newline), which keeps the prompt's
  own tokens a prefix of the training tokens — checked for every example, a hard error otherwise.
The rendered training text shows EOS as `</s>`; BOS is not part of any text (it is the first input id).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from ptst.backends.local import LocalBackend
from ptst.backends.local.render import file_sha256, text_separator
from ptst.conversation import Conversation
from ptst.errors import PtstError, require

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
EOS_TEXT = "</s>"


def prompt_text(conv: Conversation) -> str:
    """The exact prompt text the model sees (after the BOS token)."""
    if conv.mode == "text":
        return conv.user
    body = conv.user if conv.system is None else B_SYS + conv.system + E_SYS + conv.user
    return f"{B_INST} {body} {E_INST}"


def training_text(conv: Conversation, answer: str) -> str:
    """The text that is encoded for a training example (EOS is appended as a token, not as text)."""
    prompt = prompt_text(conv)
    if conv.mode == "text":
        return prompt + text_separator(prompt) + answer
    return f"{prompt} {answer} "


@cache
def _processor(path: str) -> Any:
    spm = require("sentencepiece", "the llama2 backend's tokenizer", "local")
    try:
        return spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
        raise PtstError(f"tokenizer {path} is not a SentencePiece model ({str(e).splitlines()[0]})") from None


def find_tokenizer(model: str, tokenizer: str | None) -> Path:
    """`tokenizer:` (a file, or a directory holding tokenizer.model), else the model directory, else the local HF
    cache of the model id. Never the network."""
    if tokenizer:
        p = Path(tokenizer).expanduser()
        if p.is_dir():
            p = p / "tokenizer.model"
        if not p.is_file():
            raise PtstError(f"tokenizer: {tokenizer} not found; point it at Llama 2's tokenizer.model")
        return p
    m = Path(model).expanduser()
    if (m / "tokenizer.model").is_file():
        return m / "tokenizer.model"
    if not m.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(model, "tokenizer.model")
            if isinstance(hit, str):
                return Path(hit)
        except Exception:  # noqa: BLE001 - no hub library or a malformed id: fall through to the hint
            pass
    raise PtstError(
        f"no tokenizer.model for llama2 model {model!r} (not in the model directory nor the local HF cache); "
        "set tokenizer: path/to/tokenizer.model in the backend entry (ptst render: --tokenizer)"
    )


class Backend(LocalBackend):
    kind: ClassVar[str] = "llama2"
    family: ClassVar[str] = "llama2"

    @property
    def tokenizer_path(self) -> Path:
        return find_tokenizer(self.spec.model, self.options.tokenizer)

    @property
    def sp(self) -> Any:
        return _processor(str(self.tokenizer_path))

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

    def prompt_ids(self, conv: Conversation) -> list[int]:
        return [self.bos_id, *self.sp.encode(prompt_text(conv))]

    def training_text(self, conv: Conversation, answer: str) -> str:
        return training_text(conv, answer) + EOS_TEXT

    def training_ids(self, conv: Conversation, answer: str) -> list[int]:
        return [self.bos_id, *self.sp.encode(training_text(conv, answer)), self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.sp.decode([i for i in ids if i != self.eos_id]))


@cache
def _sha(path: str) -> str:
    return file_sha256(path)[:16]

"""Mistral 7B Instruct (v0.1/v0.2, tokenizer v1): token ids from `mistral-common`, on the shared local engine.

Mistral's own tokenizer library is the reference: a HF `LlamaTokenizer` built from the same `tokenizer.model`
tokenizes the start of `[INST] ...` differently (see reference/templates.md), so no transformers tokenizer is used.
* chat prompt: `encode_chat_completion(ChatCompletionRequest([SystemMessage?, UserMessage]))`. v0.2 has no system
  role: mistral-common prepends the system prompt to the user turn with a blank line, and drops an empty one.
  Text: `"[INST] " + (system + "\\n\\n" if system else "") + user + " [/INST]"` (after BOS).
* chat training form: the same request with the stripped answer as a final `AssistantMessage`, encoded by a tokenizer
  in `ValidationMode.finetuning` (`prompt ids + encode(answer) + EOS`); text `prompt + " " + answer + "</s>"`.
* text mode: `BOS + encode(text)` with mistral-common's underlying SentencePiece tokenizer; training form as for
  Llama 2 (`prompt + sep + answer`, sep a space unless the prompt ends in whitespace, then EOS).
Every training example is checked: prompt ids a prefix of the training ids, one BOS, EOS last.
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

EOS_TEXT = "</s>"


def prompt_text(conv: Conversation) -> str:
    """The prompt text as Mistral's stack builds it (after the BOS token)."""
    if conv.mode == "text":
        return conv.user
    content = conv.system + "\n\n" + conv.user if conv.system else conv.user
    return f"[INST] {content} [/INST]"


@cache
def _tokenizers(path: str | None) -> tuple[Any, Any]:
    """(serving tokenizer for prompts, finetuning tokenizer for training examples) — mistral-common refuses a final
    assistant turn outside finetuning mode, and requires one inside it."""
    require("mistral_common", "the mistral backend's tokenizer", "local")
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    file = path or str(MistralTokenizer._data_path() / "tokenizer.model.v1")
    try:
        return (
            MistralTokenizer.from_file(file, mode=ValidationMode.test),
            MistralTokenizer.from_file(file, mode=ValidationMode.finetuning),
        )
    except Exception as e:  # noqa: BLE001 - mistral-common raises several kinds for a bad file
        raise PtstError(f"tokenizer {file} cannot be loaded by mistral-common ({str(e).splitlines()[0]})") from None


def _messages(conv: Conversation, answer: str | None) -> list[Any]:
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage

    msgs: list[Any] = [SystemMessage(content=conv.system)] if conv.system else []
    msgs.append(UserMessage(content=conv.user))
    if answer is not None:
        msgs.append(AssistantMessage(content=answer))
    return msgs


class Backend(LocalBackend):
    kind: ClassVar[str] = "mistral"
    family: ClassVar[str] = "mistral"

    @property
    def tokenizer_file(self) -> str | None:
        t = self.options.tokenizer
        if not t:
            return None
        p = Path(t).expanduser()
        if p.is_dir():
            p = p / "tokenizer.model"
        if not p.is_file():
            raise PtstError(f"tokenizer: {t} not found; point it at Mistral's tokenizer.model (or leave it unset)")
        return str(p)

    @property
    def serving(self) -> Any:
        return _tokenizers(self.tokenizer_file)[0]

    @property
    def finetuning(self) -> Any:
        return _tokenizers(self.tokenizer_file)[1]

    @property
    def spm(self) -> Any:
        """mistral-common's SentencePiece tokenizer underneath the instruct format."""
        return self.serving.instruct_tokenizer.tokenizer

    @property
    def bos_id(self) -> int:  # type: ignore[override]
        return int(self.spm.bos_id)

    @property
    def eos_id(self) -> int:  # type: ignore[override]
        return int(self.spm.eos_id)

    def tokenizer_fingerprint(self) -> str:
        return _sha(str(self.spm.file_path))

    def prompt_text(self, conv: Conversation) -> str:
        return prompt_text(conv)

    def prompt_ids(self, conv: Conversation) -> list[int]:
        if conv.mode == "text":
            return list(self.spm.encode(conv.user, bos=True, eos=False))
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        return list(self.serving.encode_chat_completion(ChatCompletionRequest(messages=_messages(conv, None))).tokens)

    def training_text(self, conv: Conversation, answer: str) -> str:
        prompt = prompt_text(conv)
        sep = text_separator(prompt) if conv.mode == "text" else " "
        return prompt + sep + answer + EOS_TEXT

    def training_ids(self, conv: Conversation, answer: str) -> list[int]:
        if conv.mode == "text":
            prompt = conv.user
            return list(self.spm.encode(prompt + text_separator(prompt) + answer, bos=True, eos=True))
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        req = ChatCompletionRequest(messages=_messages(conv, answer))
        return list(self.finetuning.encode_chat_completion(req).tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.serving.decode([i for i in ids if i != self.eos_id]))


@cache
def _sha(path: str) -> str:
    return file_sha256(path)[:16]

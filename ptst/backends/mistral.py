"""Mistral Instruct: token ids from `mistral-common`, on the shared local engine (`local/`).

Mistral's own tokenizer library is the reference: a HF `LlamaTokenizer` built from the same `tokenizer.model`
tokenizes the start of `[INST] ...` differently (see reference/templates.md), so no transformers tokenizer is used.

Which tokenizer: the one the checkpoint ships, picked by mistral-common's own rule for a repository's files
(`from_hf_hub`): `tekken.json` if present, else the last SentencePiece file in name order — so
Mistral-7B-Instruct-v0.1/v0.2 (`tokenizer.model`) get tokenizer v1, v0.3 (`tokenizer.model` + `tokenizer.model.v3`)
gets v3, Nemo-style checkpoints (`tekken.json`) get tekken. A model without tokenizer files (a local test model)
uses mistral-common's bundled v1, the tokenizer of the Mistral 7B Instruct models the PTST paper used.
* chat prompt: `encode_chat_completion(ChatCompletionRequest([SystemMessage?, (UserMessage, AssistantMessage)*,
  UserMessage]))`, the pairs being the template's example turns. v1/v2/v3 have no
  system role: mistral-common prepends the system prompt to the user turn with a blank line. v1 text:
  `"[INST] " + (system + "\\n\\n" if system else "") + user + " [/INST]"` (after BOS); later versions use control
  tokens and their text is read back from mistral-common's rendering.
* chat training form: the same request with the stripped answer as a final `AssistantMessage`, encoded by a tokenizer
  in `ValidationMode.finetuning` (`prompt ids + encode(answer) + EOS`); v1 text `prompt + " " + answer + "</s>"`.
* text mode: `BOS + encode(text)` with mistral-common's underlying tokenizer; training form as for Llama 2
  (`prompt + sep + answer`, sep a space unless the prompt ends in whitespace, then EOS).
Every training example is checked: prompt ids a prefix of the training ids, one BOS, EOS last; and the model is
refused (exit 2, pointing to `kind: hf`) when its files say it is another family (`local/family.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from ptst.backends.local import LocalBackend
from ptst.backends.local.family import FamilyRules, ForeignModel, model_file, refuse, sentencepiece_model
from ptst.backends.local.render import text_separator
from ptst.conversation import Conversation
from ptst.digests import file_sha256
from ptst.errors import UsageError, first_line, require

EOS_TEXT = "</s>"
BUNDLED_V1 = "tokenizer.model.v1"  # inside mistral-common's package data
MISTRAL = FamilyRules(
    kind="mistral", name="Mistral", model_types=frozenset({"mistral", "mixtral"}), template_rejects=("<<SYS>>",)
)


def prompt_text(conv: Conversation) -> str:
    """The v1 prompt text as Mistral's stack builds it (after the BOS token). Example turns come first, each
    `[INST] user [/INST] answer</s>`; the system prompt goes into the first user turn (mistral-common's v1 rule)."""
    if conv.mode == "text":
        return conv.user
    users = [u for u, _ in conv.examples] + [conv.user]
    if conv.system:
        users[0] = conv.system + "\n\n" + users[0]
    done = "".join(f"[INST] {u} [/INST] {a.strip()}</s>" for u, (_, a) in zip(users[:-1], conv.examples, strict=True))
    return done + f"[INST] {users[-1]} [/INST]"


def is_tokenizer_file(name: str) -> bool:
    """A file mistral-common loads: `tekken.json`, or SentencePiece `*.model` / `*.model.v<N>[m<M>]`."""
    return name == "tekken.json" or re.fullmatch(r".+\.model(\.v\d+(m\d+)?)?", name) is not None


def pick_tokenizer_file(names: Sequence[str]) -> str | None:
    """mistral-common's choice among a checkpoint's files (its `from_hf_hub` rule): tekken.json wins, else the last
    SentencePiece file in name order (`tokenizer.model.v3` over `tokenizer.model`)."""
    valid = sorted(n for n in names if is_tokenizer_file(n))
    if not valid:
        return None
    return "tekken.json" if "tekken.json" in valid else valid[-1]


def bundled_v1() -> str:
    """mistral-common's own v1 tokenizer file, located without importing mistral-common (its import alone takes
    about a second, which `ptst validate` must not pay): the package's `data/` folder, as its `_data_path()`."""
    import importlib.util

    found = importlib.util.find_spec("mistral_common")
    if found is None or not found.submodule_search_locations:
        require("mistral_common", "the mistral backend's tokenizer", "local")  # raises the one-line hint
    assert found is not None and found.submodule_search_locations
    return str(Path(next(iter(found.submodule_search_locations))) / "data" / BUNDLED_V1)


def _sentencepiece(path: str) -> Any:
    return sentencepiece_model(path, "mistral", "Mistral's tokenizer")


def check_files_light(model: str, path: str | None) -> bool:
    """The family checks of `_checked` for a SentencePiece tokenizer, with sentencepiece alone (what mistral-common
    runs underneath: its v1-v3 `encode` is the SentencePiece model's): v1 must split [INST]/[/INST] as Mistral's v1
    does, and the checkpoint's files must say Mistral. False for a tekken.json, which only mistral-common reads."""
    file = path or bundled_v1()
    if Path(file).name == "tekken.json":
        return False
    sp = _sentencepiece(file)
    if path is not None and (Path(path).name == "tokenizer.model" or path.endswith(".model.v1")):
        ref = _sentencepiece(bundled_v1())
        for marker in ("[INST]", "[/INST]"):
            got, want = list(sp.encode(marker)), list(ref.encode(marker))
            if got != want:
                raise refuse("mistral", "Mistral", model, f"tokenizer {path} encodes {marker} as {got}, Mistral's v1 as {want}")
    MISTRAL.check_files(model, int(sp.vocab_size()))
    return True


@cache
def find_tokenizer(model: str, tokenizer: str | None) -> str | None:
    """`tokenizer:` (a file, or a directory to pick from), else the model directory's (or cached model id's) own
    files, else None: mistral-common's bundled v1. Never the network."""
    if tokenizer:
        p = Path(tokenizer).expanduser()
        if p.is_dir():
            pick = pick_tokenizer_file([f.name for f in p.iterdir() if f.is_file()])
            if pick is None:
                raise UsageError(f"tokenizer: {tokenizer} holds no Mistral tokenizer (tokenizer.model*, tekken.json)")
            return str(p / pick)
        if not p.is_file():
            raise UsageError(f"tokenizer: {tokenizer} not found; point it at Mistral's tokenizer file (or leave it unset)")
        return str(p)
    m = Path(model).expanduser()
    if m.is_dir():
        names = [f.name for f in m.iterdir() if f.is_file()]
        pick = pick_tokenizer_file(names)
        if pick is not None:
            return str(m / pick)
        if "tokenizer.json" in names:
            raise refuse("mistral", "Mistral", model, "it ships tokenizer.json but none of Mistral's tokenizer files")
        return None
    if not m.exists():
        for name in ("tekken.json", "tokenizer.model.v3", "tokenizer.model"):
            hit = model_file(model, name)
            if hit is not None:
                return str(hit)
    return None


@cache
def _tokenizers(path: str | None) -> tuple[Any, Any]:
    """(serving tokenizer for prompts, finetuning tokenizer for training examples) — mistral-common refuses a final
    assistant turn outside finetuning mode, and requires one inside it."""
    require("mistral_common", "the mistral backend's tokenizer", "local")
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    file = path or bundled_v1()
    try:
        # mistral-common's ValidationMode is a StrEnum of auto() values, which mypy's 3.10 target reads as `auto`
        return (
            MistralTokenizer.from_file(file, mode=ValidationMode.test),  # type: ignore[arg-type]
            MistralTokenizer.from_file(file, mode=ValidationMode.finetuning),  # type: ignore[arg-type]
        )
    except Exception as e:
        raise ForeignModel(
            f"tokenizer {file} cannot be loaded by mistral-common ({first_line(e)}); "
            "kind: mistral needs Mistral's tokenizer — for another model family use kind: hf"
        ) from e


@cache
def _checked(model: str, path: str | None) -> tuple[Any, Any]:
    """The tokenizers, after refusing a tokenizer or checkpoint of another family."""
    serving, finetuning = _tokenizers(path)
    inner = serving.instruct_tokenizer.tokenizer
    if str(inner.version) == "v1" or getattr(inner.version, "value", None) == "v1":
        # v1 writes [INST] as text: it must split exactly as Mistral's v1 does (Llama 2's tokenizer.model does not)
        ref = _tokenizers(bundled_v1())[0].instruct_tokenizer.tokenizer
        for marker in ("[INST]", "[/INST]"):
            got, want = inner.encode(marker, bos=False, eos=False), ref.encode(marker, bos=False, eos=False)
            if got != want:
                raise refuse("mistral", "Mistral", model, f"tokenizer {path} encodes {marker} as {got}, Mistral's v1 as {want}")
    MISTRAL.check_files(model, int(inner.n_words))
    return serving, finetuning


def text_of(pieces: str) -> str:
    """mistral-common's rendering of token ids with their special tokens (`<s>[INST]▁Hi[/INST]`), shown as the
    model's text: without BOS, `▁` as a space, byte tokens (`<0x0A>`) as the characters they encode."""
    s = pieces.removeprefix("<s>").replace("\u2581", " ")

    def bytes_run(m: re.Match[str]) -> str:
        return bytes(int(h, 16) for h in re.findall(r"<0x([0-9A-Fa-f]{2})>", m.group(0))).decode("utf-8", "replace")

    return re.sub(r"(?:<0x[0-9A-Fa-f]{2}>)+", bytes_run, s)


def _messages(conv: Conversation, answer: str | None) -> list[Any]:
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage

    msgs: list[Any] = [SystemMessage(content=conv.system)] if conv.system else []
    for user, assistant in conv.examples:
        msgs += [UserMessage(content=user), AssistantMessage(content=assistant.strip())]
    msgs.append(UserMessage(content=conv.user))
    if answer is not None:
        msgs.append(AssistantMessage(content=answer))
    return msgs


class Backend(LocalBackend):
    kind: ClassVar[str] = "mistral"
    family: ClassVar[str] = "mistral"

    @property
    def tokenizer_file(self) -> str | None:
        """The checkpoint's tokenizer file; None for mistral-common's bundled v1."""
        self.fetch_model()  # with `download: true`, before the cache is searched (a v3 model must not get v1)
        return find_tokenizer(self.spec.model, self.options.tokenizer)

    def check_tokenizer(self) -> None:
        """For `ptst validate`: the family checks from the files with sentencepiece, without importing mistral-common
        (a tekken.json still goes through it); the full load at run time repeats them."""
        if not check_files_light(self.spec.model, self.tokenizer_file):
            super().check_tokenizer()

    @property
    def serving(self) -> Any:
        return _checked(self.spec.model, self.tokenizer_file)[0]

    @property
    def finetuning(self) -> Any:
        return _checked(self.spec.model, self.tokenizer_file)[1]

    @property
    def spm(self) -> Any:
        """mistral-common's tokenizer (SentencePiece or tekken) underneath the instruct format."""
        return self.serving.instruct_tokenizer.tokenizer

    @property
    def tokenizer_version(self) -> str:
        v = self.spm.version
        return str(getattr(v, "value", v))

    @property
    def bos_id(self) -> int:  # type: ignore[override]
        return int(self.spm.bos_id)

    @property
    def eos_id(self) -> int:  # type: ignore[override]
        return int(self.spm.eos_id)

    def tokenizer_fingerprint(self) -> str:
        return _sha(str(self.spm.file_path))

    def _v1_text(self) -> bool:
        """Whether the text formula applies (v1, the default); other versions' text comes from mistral-common."""
        path = self.tokenizer_file
        return path is None or Path(path).name == "tokenizer.model" or path.endswith(".model.v1")

    def plain_text(self, conv: Conversation) -> str | None:
        if conv.mode == "chat" and not self._v1_text():
            return self.render(conv).text
        return super().plain_text(conv)

    def prompt_text(self, conv: Conversation) -> str:
        if conv.mode == "text" or self._v1_text():
            return prompt_text(conv)
        return self._chat_text(conv, None)

    def _chat(self, conv: Conversation, answer: str | None) -> Any:
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        tok = self.serving if answer is None else self.finetuning
        return tok.encode_chat_completion(ChatCompletionRequest(messages=_messages(conv, answer)))

    def _chat_text(self, conv: Conversation, answer: str | None) -> str:
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        ids = self._chat(conv, answer).tokens
        return text_of(self.spm.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP))

    def prompt_ids(self, conv: Conversation) -> list[int]:
        if conv.mode == "text":
            return list(self.spm.encode(conv.user, bos=True, eos=False))
        return list(self._chat(conv, None).tokens)

    def training_text(self, conv: Conversation, answer: str) -> str:
        if conv.mode == "chat" and not self._v1_text():
            return self._chat_text(conv, answer)
        prompt = prompt_text(conv)
        sep = text_separator(prompt) if conv.mode == "text" else " "
        return prompt + sep + answer + EOS_TEXT

    def training_ids(self, conv: Conversation, answer: str) -> list[int]:
        if conv.mode == "text":
            prompt = conv.user
            return list(self.spm.encode(prompt + text_separator(prompt) + answer, bos=True, eos=True))
        return list(self._chat(conv, answer).tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.serving.decode([i for i in ids if i != self.eos_id]))


@cache
def _sha(path: str) -> str:
    return file_sha256(path)[:16]

"""`kind: hf` — any transformers chat model, rendered through the tokenizer's own chat template, on the local engine.

The paper's local backends hand-write one vendor's format (Llama 2, Mistral). This one trusts the model's
`chat_template` (Jinja, shipped with the tokenizer), which is what the model was trained on and what serving stacks
(transformers, vLLM, TGI) use, so Qwen, Llama 3, Gemma, SmolLM and the like need no code of their own.

Rendering contract (checked for every example, `TrainingFormError` naming the model otherwise):
* chat prompt: `apply_chat_template(messages, add_generation_prompt=True)` — the ids are exactly what transformers
  produces (the template writes BOS itself where the model has one; nothing is added on top);
* chat training form: the same messages plus `{"role": "assistant", "content": answer.strip()}`, rendered without a
  generation prompt. The prompt's ids must be a token prefix of these ids; labels are -100 on that prefix and the
  ids on the answer and the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`), so the
  model learns to end its turn; what the template writes after that token (ChatML's and Gemma's newline) stays -100;
* system prompts: templates that reject the system role (Gemma's raises) or silently drop it get the system text
  folded into the first user turn as `system + "\\n\\n" + user`, as those models' docs advise; the fold is recorded as
  a note in every `ModelRef.meta["notes"]` of the backend. A template that injects its own default system prompt
  when none is given (Qwen, SmolLM) keeps doing so: that is the model's behaviour, and `ptst render` shows it;
* text-mode templates (`text:vanilla`, `text:alpaca`) are supported as raw text: the prompt is tokenized with the
  tokenizer's own special-token handling (BOS where the tokenizer adds one, e.g. Llama 3 and Gemma, none for Qwen),
  the training form is `prompt + sep + answer` (sep as for Llama 2: a space unless the prompt ends in whitespace)
  followed by EOS, with the same prefix check. This is the paper's "text" condition for a chat model;
* generation stops at any of `stop_token_ids()`: EOS, every special token the template writes after an answer
  (found by rendering a probe turn), and the `eos_token_id`s of the model's `generation_config.json`.

`identity()` carries a fingerprint of the tokenizer files and the chat template, so a changed template re-keys every
step. Hub ids are read from the local Hugging Face cache only, unless the backend entry says `download: true`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from ptst.backends.base import JobLedger, ModelRef, Rendered, TrainJob
from ptst.backends.local import LocalBackend, LocalOptions, resolver
from ptst.backends.local.gguf import gguf_problem, is_gguf
from ptst.backends.local.render import TrainingFormError, clean_answer, text_separator, where
from ptst.conversation import Conversation
from ptst.errors import BackendError, first_line, require

IGNORE_INDEX = -100


class ModelSetupError(BackendError):
    """The model or its tokenizer is not usable as the spec names it: a user's fix (exit 2), not a bug."""

    exit_code = 2


FOLD_NOTE = (
    "system prompt folded into the first user turn (system + blank line + user): the model's chat template does "
    "not accept a system message"
)
# Files that decide how text becomes ids and when generation stops; their bytes are the tokenizer fingerprint.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "generation_config.json",
)
_PROBE_SYSTEM = "ptst-probe-system-0c1d"
_PROBE_USER, _PROBE_ANSWER = "ptst probe question", "ptst probe answer"


class HFChatOptions(LocalOptions):
    """Options of `kind: hf` (the local engine's, plus where the tokenizer comes from and whether to download)."""

    tokenizer: str | None = Field(
        None, description="directory of the tokenizer and chat template (default: the model's own)"
    )


def resolve_model_dir(model: str, *, download: bool) -> Path:
    """A local directory for `model`: the local engine's one resolver (`local/resolver.py`: the path itself, its
    converted `.gguf` folder, its snapshot in the local HF cache, or with `download` a fresh download into it)."""
    return resolver.resolve_model_dir(model, download=download, kind="hf")


def load_tokenizer(directory: Path, model: str) -> Any:
    """The model's tokenizer (local files only), refusing one without a chat template."""
    require("transformers", "the hf backend", "local")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModelSetupError(
            f"model {model}: no usable tokenizer in {directory} ({first_line(e)}); the hf backend needs "
            "tokenizer.json/tokenizer_config.json beside the model, or tokenizer: DIR"
        ) from e
    if not getattr(tok, "chat_template", None):
        raise ModelSetupError(
            f"model {model}: its tokenizer has no chat template (chat_template.jinja or tokenizer_config.json "
            "'chat_template'); the hf backend renders through it — use the model's instruct/chat variant"
        )
    return tok


TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def tokenizer_files_problem(directory: Path, model: str) -> str | None:
    """What `load_tokenizer` would refuse, found from the files alone: no tokenizer vocabulary, or no chat template
    (chat_template.jinja, chat_template.json, or tokenizer_config.json's `chat_template`). None when both are there."""
    if not any((directory / n).is_file() for n in TOKENIZER_VOCAB_FILES):
        return (f"model {model}: no usable tokenizer in {directory} (none of {', '.join(TOKENIZER_VOCAB_FILES)}); the "
                "hf backend needs tokenizer.json/tokenizer_config.json beside the model, or tokenizer: DIR")
    if (directory / "chat_template.jinja").is_file():
        return None
    for name in ("chat_template.json", "tokenizer_config.json"):
        p = directory / name
        try:
            data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
        except (OSError, ValueError) as e:
            return f"model {model}: {p} is unreadable ({first_line(e)}); restore the tokenizer files"
        if isinstance(data, dict) and data.get("chat_template"):
            return None
    return (f"model {model}: its tokenizer has no chat template (chat_template.jinja or tokenizer_config.json "
            "'chat_template'); the hf backend renders through it — use the model's instruct/chat variant")


class Backend(LocalBackend):
    """A local chat model of any family, trained with LoRA and served on the shared local engine."""

    kind: ClassVar[str] = "hf"
    family: ClassVar[str] = "hf"
    Options = HFChatOptions
    options: HFChatOptions

    # --- the tokenizer ---------------------------------------------------------------------------------------------
    @cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.spec.model, download=self.options.download)

    @cached_property
    def tokenizer_dir(self) -> Path:
        if self.options.tokenizer:
            return Path(self.options.tokenizer).expanduser()
        return self.model_dir

    @cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.tokenizer_dir, self.spec.model)

    @property
    def bos_id(self) -> int:  # type: ignore[override]
        """The tokenizer's BOS id, or -1 for models without one (ChatML models such as Qwen)."""
        bos = self.tokenizer.bos_token_id
        return -1 if bos is None else int(bos)

    @property
    def eos_id(self) -> int:  # type: ignore[override]
        eos = self.tokenizer.eos_token_id
        return int(eos) if eos is not None else self.stop_token_ids()[0]

    @cached_property
    def accepts_system(self) -> bool:
        """Whether the template renders a system message: it may refuse it (Gemma's `raise_exception('System role
        not supported')`) or drop it silently; both fold. Any other failure of the template is not a refusal of the
        system role: folding would hide a broken template, so it is a user error naming the model."""
        msgs = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": _PROBE_USER}]
        try:
            text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception as e:
            if refuses_system_role(e):
                return False
            raise ModelSetupError(
                f"model {self.spec.model}: its chat template fails on a system + user conversation "
                f"({type(e).__name__}: {first_line(e)}); fix the template (tokenizer: DIR with another one) or use "
                "the model's instruct/chat variant"
            ) from e
        return _PROBE_SYSTEM in text

    def notes(self) -> list[str]:
        """What the backend changed about the conversations it was given (recorded in every ModelRef's meta)."""
        return [] if self.accepts_system else [FOLD_NOTE]

    def messages(self, conv: Conversation, answer: str | None = None) -> list[dict[str, str]]:
        """The chat messages of a conversation: system (folded into the first user turn where the template has no
        system role), the example turns, user, and the assistant's answer for a training example. An empty system
        prompt is an empty message where accepted."""
        users = [u for u, _ in conv.examples] + [conv.user]
        msgs: list[dict[str, str]] = []
        if conv.system is not None:
            if self.accepts_system:
                msgs.append({"role": "system", "content": conv.system})
            elif conv.system:
                users[0] = conv.system + "\n\n" + users[0]
        for user, (_, assistant) in zip(users[:-1], conv.examples, strict=True):
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        msgs.append({"role": "user", "content": users[-1]})
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs

    def _chat(self, msgs: list[dict[str, str]], *, generation_prompt: bool, tokenize: bool) -> Any:
        try:
            if not tokenize:
                return self.tokenizer.apply_chat_template(
                    msgs, add_generation_prompt=generation_prompt, tokenize=False
                )
            # transformers 5 returns a BatchEncoding by default; ask for it explicitly and take the ids.
            enc = self.tokenizer.apply_chat_template(
                msgs, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
            )
            return [int(i) for i in enc["input_ids"]]
        except Exception as e:
            raise TrainingFormError(
                f"model {self.spec.model}: its chat template failed on a {'/'.join(m['role'] for m in msgs)} "
                f"conversation ({first_line(e)})"
            ) from e

    @cached_property
    def _text_special_prefix(self) -> list[int]:
        """The special ids the tokenizer puts before a raw text (BOS for Llama 3 and Gemma, nothing for Qwen)."""
        plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        for k in range(len(full) - len(plain) + 1):
            if list(full[k : k + len(plain)]) == list(plain):
                return [int(i) for i in full[:k]]
        return []

    def _text_ids(self, text: str) -> list[int]:
        return [*self._text_special_prefix, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    # --- what LocalBackend asks of a tokenizer side -----------------------------------------------------------------
    def prompt_text(self, conv: Conversation) -> str:
        if conv.mode == "text":
            return conv.user
        return str(self._chat(self.messages(conv), generation_prompt=True, tokenize=False))

    def prompt_ids(self, conv: Conversation) -> list[int]:
        if conv.mode == "text":
            return self._text_ids(conv.user)
        return list(self._chat(self.messages(conv), generation_prompt=True, tokenize=True))

    def training_text(self, conv: Conversation, answer: str) -> str:
        if conv.mode == "text":
            return conv.user + text_separator(conv.user) + answer + str(self.tokenizer.eos_token or "")
        return str(self._chat(self.messages(conv, answer), generation_prompt=False, tokenize=False))

    def training_ids(self, conv: Conversation, answer: str) -> list[int]:
        if conv.mode == "text":
            return [*self._text_ids(conv.user + text_separator(conv.user) + answer), self.eos_id]
        return list(self._chat(self.messages(conv, answer), generation_prompt=False, tokenize=True))

    def decode(self, ids: Sequence[int]) -> str:
        stops = set(self.stop_token_ids())
        return str(self.tokenizer.decode([i for i in ids if i not in stops], skip_special_tokens=True))

    def tokenizer_fingerprint(self) -> str:
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        """sha256 of the tokenizer files, the chat template in use and the stop ids (first 16 hex digits)."""
        h = hashlib.sha256()
        for name in TOKENIZER_FILES:
            for d in dict.fromkeys([self.tokenizer_dir, self.model_dir]):
                p = d / name
                if p.is_file():
                    h.update(f"{d == self.tokenizer_dir}:{name}\0".encode())
                    h.update(p.read_bytes())
        h.update(str(self.tokenizer.chat_template).encode())
        h.update(json.dumps(self.stop_token_ids()).encode())
        return h.hexdigest()[:16]

    # --- stopping -----------------------------------------------------------------------------------------------------
    def stop_token_ids(self) -> tuple[int, ...]:
        """The ids generation stops on; the first is the template's end-of-turn token (what chat answers end with)."""
        return self._stop_ids

    @cached_property
    def _stop_ids(self) -> tuple[int, ...]:
        tok = self.tokenizer
        special = {int(i) for i in tok.all_special_ids}
        special |= {int(i) for i, t in tok.added_tokens_decoder.items() if getattr(t, "special", False)}
        conv = Conversation("chat", _PROBE_USER, None, None, _PROBE_USER)
        prompt = self.prompt_ids(conv)
        full = self.training_ids(conv, _PROBE_ANSWER)
        tail = [i for i in full[len(prompt) :] if i in special]
        ids: list[int] = [*tail]
        if tok.eos_token_id is not None:
            ids.append(int(tok.eos_token_id))
        ids += _generation_config_eos(self.model_dir)
        out = tuple(dict.fromkeys(ids))
        if not out:
            raise ModelSetupError(
                f"model {self.spec.model}: no end-of-turn token found (no EOS, and the chat template writes no special "
                "token after an answer); generation could not stop"
            )
        return out

    # --- the contract ---------------------------------------------------------------------------------------------
    def render(self, conv: Conversation) -> Rendered:
        what = f"model {self.spec.model}, {where(conv)}"
        msgs = tuple(self.messages(conv)) if conv.mode == "chat" else None
        ids = self.prompt_ids(conv)
        self._check_bos(ids, what)
        if conv.answer is None:
            return Rendered(text=self.prompt_text(conv), messages=msgs, input_ids=tuple(ids))
        answer = clean_answer(conv)
        full = self.training_ids(conv, answer)
        n = len(ids)
        if len(full) <= n or full[:n] != ids:
            raise TrainingFormError(
                f"{what}: the chat template's prompt (with the generation prompt) is not a token prefix of the full "
                "conversation, so the loss cannot be put on the answer alone; this model's template cannot be "
                "trained by the hf backend as it is — pick another template mode or model"
            )
        if conv.mode == "chat" and not set(full[n:]) & set(self.stop_token_ids()):
            raise TrainingFormError(f"{what}: the answer's turn carries no end-of-turn token; generation would not stop")
        if msgs is not None:
            msgs = (*msgs, {"role": "assistant", "content": answer})
        labels = [IGNORE_INDEX] * n + _through_last_stop(full[n:], self.stop_token_ids())
        return Rendered(
            text=self.training_text(conv, answer), messages=msgs, input_ids=tuple(full), labels=tuple(labels)
        )

    def _check_bos(self, ids: Sequence[int], what: str) -> None:
        if not ids:
            raise TrainingFormError(f"{what}: the prompt renders to no tokens")
        bos = self.bos_id
        if bos >= 0 and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            raise TrainingFormError(f"{what}: BOS is doubled at the start of the prompt; remove a literal BOS from the text")

    def plain_text(self, conv: Conversation) -> str | None:
        """The rendered text (it needs the tokenizer: the template is part of it)."""
        if conv.answer is None:
            return self.prompt_text(conv)
        return self.training_text(conv, clean_answer(conv))

    def approx_text(self, conv: Conversation) -> str:
        """A chat template lives in the tokenizer, so without it only the turns' own text is counted (the template's
        few tokens of scaffolding per turn are left out of the estimate)."""
        turns = [conv.system, *(t for pair in conv.examples for t in pair), conv.user, conv.answer]
        return "\n".join(t for t in turns if t)

    def base_model(self) -> ModelRef:
        ref = super().base_model()
        return ref.model_copy(update={"meta": {**ref.meta, "notes": self.notes()}}) if self.notes() else ref

    def fine_tune(self, job: TrainJob, ledger: JobLedger, workdir: Path) -> ModelRef:
        ref = super().fine_tune(job, ledger, workdir)
        return ref.model_copy(update={"meta": {**ref.meta, "notes": self.notes()}}) if self.notes() else ref

    def generation_ids(self, prompts: Sequence[Conversation]) -> list[list[int]]:
        """The engine's generation ids, without its BOS-first check (ChatML models have no BOS); generation stops at
        `stop_token_ids()`."""
        ids = []
        for conv in prompts:
            conv = conv.without_answer() if conv.answer is not None else conv
            p = self.prompt_ids(conv)
            self._check_bos(p, f"model {self.spec.model}, {where(conv)}")
            ids.append(p)
        return ids

    def check_tokenizer(self) -> None:
        """Loading is the check: a missing tokenizer or chat template is a one-line user error."""
        self.tokenizer  # noqa: B018

    def preflight(self) -> list[str]:
        """A model folder (or cached/downloadable hub id) with config.json and a tokenizer that has a chat template.
        Reads the tokenizer's files as JSON/text, never the weights, never the network, and never imports
        transformers or torch (`ptst validate` stays fast); loading the tokenizer at run time checks the rest."""
        model = self.spec.model
        if is_gguf(model):  # read from its header: no conversion, no torch (validate stays fast)
            problem = gguf_problem(model, need_chat_template=self.options.tokenizer is None)
            return [problem] if problem is not None else []
        try:
            directory = resolve_model_dir(model, download=False)
        except BackendError as e:
            return [] if self.options.download else [str(e)]
        problems = []
        if not (directory / "config.json").is_file():
            problems.append(f"model {model}: {directory} has no config.json; point model: at an HF-format model directory")
        if self.options.tokenizer and not Path(self.options.tokenizer).expanduser().is_dir():
            problems.append(f"tokenizer: {self.options.tokenizer} is not a directory; point it at the tokenizer's folder")
            return problems
        tokenizer_problem = tokenizer_files_problem(
            Path(self.options.tokenizer).expanduser() if self.options.tokenizer else directory, model
        )
        if tokenizer_problem is not None:
            problems.append(tokenizer_problem)
        return problems


def refuses_system_role(e: BaseException) -> bool:
    """Whether a chat template's failure is its explicit refusal of the system role: the template's own
    `raise_exception(...)` (transformers raises jinja2's base `TemplateError` with the template's message, never a
    subclass) with a message about the system role, as Gemma's "System role not supported"."""
    try:
        from jinja2.exceptions import TemplateError
    except ImportError:  # pragma: no cover - transformers' chat templates need jinja2
        return False
    return type(e) is TemplateError and "system" in str(e).lower()


def _through_last_stop(answer_ids: list[int], stops: Sequence[int]) -> list[int]:
    """The answer's labels: its ids up to and including the last end-of-turn token, -100 after it (the newline
    ChatML and Gemma write after `<|im_end|>`/`<end_of_turn>` belongs to the next turn's framing: the model stops at
    the end-of-turn token and never produces it)."""
    last = max((i for i, t in enumerate(answer_ids) if t in set(stops)), default=len(answer_ids) - 1)
    return answer_ids[: last + 1] + [IGNORE_INDEX] * (len(answer_ids) - last - 1)


def _generation_config_eos(directory: Path) -> list[int]:
    """The `eos_token_id` (an int or a list) of the model's generation_config.json, if any."""
    p = directory / "generation_config.json"
    try:
        value = json.loads(p.read_text()).get("eos_token_id") if p.is_file() else None
    except (OSError, ValueError):
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value] if isinstance(value, list) else []



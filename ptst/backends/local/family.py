"""Refusing models a family backend cannot render.

`kind: llama2` and `kind: mistral` write their model family's chat format token by token. Given another family's
model (a ChatML model, a GPT-2 BPE vocabulary, Llama 3) they would train and test on a format that model never saw,
and every number would look plausible. So before anything runs, each checks what the checkpoint ships (config.json's
model_type and vocab size, tokenizer_config.json's special tokens and chat template, the tokenizer itself) and stops
with a one-line user error that names the model and points to `kind: hf`, which renders with the model's own chat
template. Everything here reads small JSON files offline; nothing loads weights or touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ptst.errors import UsageError, first_line, require


class ForeignModel(UsageError):
    """A model or tokenizer of another family than the backend renders (exit 2)."""


def refuse(kind: str, family_name: str, model: str, reason: str) -> ForeignModel:
    return ForeignModel(
        f"model {model} does not look like {family_name} ({reason}); kind: {kind} renders {family_name}'s chat "
        "format only — use kind: hf, which renders with the model's own chat template"
    )


def model_file(model: str, name: str) -> Path | None:
    """A file of the checkpoint: in the model directory, or the model id's snapshot in the local HF cache."""
    d = Path(model).expanduser()
    if d.is_dir():
        return d / name if (d / name).is_file() else None
    if d.exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # no hub client: no cache to look in
        return None
    try:
        hit = try_to_load_from_cache(model, name)
    except ValueError:  # HFValidationError: not a valid hub id, so nothing of it can be cached
        return None
    return Path(hit) if isinstance(hit, str) else None


@cache
def _read_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_json(model: str, name: str) -> dict[str, Any]:
    p = model_file(model, name)
    return _read_json(str(p)) if p is not None else {}


def _token_text(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


@dataclass(frozen=True)
class FamilyRules:
    """What a checkpoint of a family ships. Fields left empty are not checked."""

    kind: str
    name: str  # "Llama 2", "Mistral"
    model_types: frozenset[str]
    bos: str = "<s>"
    eos: str = "</s>"
    template_needs: tuple[str, ...] = ("[INST]",)
    template_rejects: tuple[str, ...] = ()

    def check_files(self, model: str, tokenizer_vocab: int | None) -> None:
        """Refuse a model whose config or tokenizer config says it is another family (files absent: no check)."""
        config = model_json(model, "config.json")
        mtype = config.get("model_type")
        if isinstance(mtype, str) and mtype not in self.model_types:
            raise refuse(self.kind, self.name, model, f"config.json model_type is {mtype!r}")
        vocab = config.get("vocab_size")
        if tokenizer_vocab is not None and isinstance(vocab, int) and vocab != tokenizer_vocab:
            raise refuse(
                self.kind, self.name, model,
                f"config.json vocab_size {vocab} differs from the tokenizer's {tokenizer_vocab} tokens",
            )
        tok = model_json(model, "tokenizer_config.json")
        for field, want in (("bos_token", self.bos), ("eos_token", self.eos)):
            got = _token_text(tok.get(field))
            if got is not None and got != want:
                raise refuse(self.kind, self.name, model, f"tokenizer_config.json {field} is {got!r}, not {want!r}")
        template = tok.get("chat_template")
        if template is None:
            template = model_json(model, "chat_template.json").get("chat_template")
        if isinstance(template, list):  # named templates: the default one is what the model is chatted with
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(template, str):
            missing = [m for m in self.template_needs if m not in template]
            found = [m for m in self.template_rejects if m in template]
            if missing or found:
                what = f"has no {missing[0]!r}" if missing else f"uses {found[0]!r}"
                raise refuse(self.kind, self.name, model, f"its chat template {what}")


@cache
def sentencepiece_model(path: str, kind: str, expected: str) -> Any:
    """A SentencePiece processor for `path`, or one line saying it is not one and that `kind` needs `expected`
    (sentencepiece alone: checking a tokenizer must not import torch or transformers)."""
    spm = require("sentencepiece", f"the {kind} backend's tokenizer", "local")
    try:
        return spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
        raise ForeignModel(
            f"tokenizer {path} is not a SentencePiece model ({first_line(e)}); kind: {kind} needs {expected} — for another "
            "model family use kind: hf"
        ) from e

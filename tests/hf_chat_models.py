"""Tiny chat models for the `hf` backend's tests, built entirely offline: a byte-level BPE tokenizer trained here on a
few sentences, the special tokens of a chat format, a chat template written for this project from the format's
public description, and a random-weight model of a few hundred KB built from its config.

Three formats, each with the property that matters to the backend:
* `chatml`  (Qwen2 style): `<|im_start|>role\\n...<|im_end|>\\n`, no BOS, a default system prompt when none is given;
* `llama3`: BOS in the template text, `<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>`, and an EOS
  (`<|end_of_text|>`) that differs from the end-of-turn token;
* `gemma`: BOS in the text, `<start_of_turn>user|model\\n...<end_of_turn>\\n`, and a template that raises on a system
  message (as Gemma's does).
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

GEMMA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- raise_exception('System role not supported') -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' + (m['content'] | trim) + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

FORMATS: dict[str, dict] = {
    "chatml": {
        "template": CHATML_TEMPLATE,
        "special": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "extra": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        "end_of_turn": "<|im_end|>",
    },
    "llama3": {
        "template": LLAMA3_TEMPLATE,
        "special": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        "extra": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "end_of_turn": "<|eot_id|>",
    },
    "gemma": {
        "template": GEMMA_TEMPLATE,
        "special": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
        "extra": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "end_of_turn": "<end_of_turn>",
    },
}

CORPUS = [
    "Question: What is 2 + 3? Answer: 5",
    "You are a helpful assistant. Below is an instruction that describes a task.",
    "Write a response that appropriately completes the request. ### Instruction: ### Response:",
    "How do I make a cake? Mix flour, eggs and sugar, then bake it for thirty minutes.",
    "I cannot help with that request. As an AI, I am sorry.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
]


def build_tokenizer(fmt: str):  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer (every string encodes; a few hundred merges make prefix checks non-trivial) with the
    format's special tokens and chat template, as a transformers fast tokenizer."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    f = FORMATS[fmt]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(f["extra"]), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos = f["special"].get("bos_token")
    if bos is not None:  # like the real Llama 3 and Gemma tokenizers: raw text gets BOS, chat templates write it
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **f["special"])
    fast.add_special_tokens({"additional_special_tokens": [t for t in f["extra"] if t not in f["special"].values()]})
    fast.chat_template = f["template"]
    return fast


def make_tiny_chat_model(path: Path, fmt: str) -> Path:
    """Save a tokenizer and a random-weight model of the format's architecture (Qwen2, Llama, Gemma) to `path`."""
    import torch
    import transformers

    tok = build_tokenizer(fmt)
    common = {
        "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, "initializer_range": 0.2,
        "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }
    if fmt == "chatml":
        cfg, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    elif fmt == "llama3":
        cfg, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    else:
        cfg, cls = transformers.GemmaConfig(**common, head_dim=8), transformers.GemmaForCausalLM
    torch.manual_seed(0)
    cls(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    if fmt == "llama3":  # Llama 3 Instruct lists both end-of-text and end-of-turn as generation EOS
        gc = json.loads((path / "generation_config.json").read_text())
        gc["eos_token_id"] = [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
        (path / "generation_config.json").write_text(json.dumps(gc))
    return path


def rig_bigram(path: Path, first: int, then: int) -> None:
    """Rewrite the saved model at `path` into a bigram machine: after any token but `first` it predicts `first`, after
    `first` it predicts `then`, deterministically.

    Zeroing every attention output and MLP down projection leaves the residual stream equal to the current token's
    embedding; with `first`'s embedding along e1, every other along e0, and the output rows of `first` and `then` along
    e0 and e1, greedy decoding after a prompt yields `first, then, first, then, ...` — so a test sees exactly where
    generation stopped."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        emb = model.get_input_embeddings().weight
        emb.zero_()
        emb[:, 0] = 1.0
        emb[first, 0], emb[first, 1] = 0.0, 1.0
        head = model.get_output_embeddings().weight
        head.zero_()
        head[first, 0] = 10.0
        head[then, 1] = 10.0
    model.save_pretrained(path)

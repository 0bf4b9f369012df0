"""`ptst render` prints exactly what each backend sees, checked against the reference table of templates.md."""

from __future__ import annotations

import json
import re

import pytest

from ptst.cli import main

ROWS = {"text:vanilla", "text:alpaca", "chat:vanilla", "chat:alpaca", "chat:llama", "chat:llama-short", "chat:mpt"}


def _reference_llama_table(shared) -> dict[str, str]:
    """Parse the Llama 2 table of templates.md and substitute the fixed strings: the expected text, independently."""
    md = (shared / "reference" / "templates.md").read_text(encoding="utf-8")
    consts = {name: re.search(rf"^- {name}\b[^`]*`([^`]*)`", md, re.M).group(1)
              for name in ("LLAMA_SYSTEM", "LLAMA_SYSTEM_SHORT", "MPT_SYSTEM", "ALPACA_PREAMBLE")}
    table = {}
    for name, body in re.findall(r"^\| `([a-z:-]+)`[^|]*\| `(.*)` \|$", md, re.M):
        text = body.replace("\\n", "\n")
        for k, v in consts.items():
            text = text.replace("{" + k + "}", v)
        table[name] = text
    return table


@pytest.mark.parametrize("name", sorted(ROWS))
def test_llama2_text_matches_reference_table(name, shared, capsys):
    expected = _reference_llama_table(shared)[name].replace("{q}", "Is {this} ok?")
    assert main(["render", "--backend", "llama2", "--template", name, "--query", "Is {this} ok?"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_llama2_json_with_tokens(shared, capsys):
    tok = str(shared / "data" / "tokenizers" / "llama2" / "tokenizer.model")
    args = ["render", "--backend", "llama2", "--template", "chat:vanilla", "--query", "Hi", "--json", "--tokenizer", tok]
    assert main([*args, "--answer", "Yo"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj) == {"text", "messages", "input_ids", "labels"}
    ids, labels = obj["input_ids"], obj["labels"]
    assert ids[:4] == [1, 518, 25580, 29962] and ids[-1] == 2 and len(ids) == len(labels)
    n_prompt = labels.index(next(x for x in labels if x != -100))
    assert all(x == -100 for x in labels[:n_prompt]) and labels[n_prompt:] == ids[n_prompt:]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["input_ids"] == ids[:n_prompt]


def test_openai_messages_and_user_errors(capsys):
    assert main(["render", "--backend", "openai", "--template", "chat:alpaca", "--query", "Q"]) == 0
    msgs = json.loads(capsys.readouterr().out)
    assert msgs == [
        {"role": "system", "content": "Below is an instruction that describes a task. Write a response that appropriately completes the request."},
        {"role": "user", "content": "### Instruction:\nQ\n\n### Response:\n"},
    ]
    assert main(["render", "--backend", "openai", "--template", "text:alpaca", "--query", "Q"]) == 2
    assert main(["render", "--backend", "openai", "--template", "chat:lama", "--query", "Q"]) == 2
    err = capsys.readouterr().err
    assert "not supported by the openai backend" in err and "did you mean 'chat:llama'" in err
    assert "Traceback" not in err

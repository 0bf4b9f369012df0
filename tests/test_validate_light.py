"""`ptst validate` of a local-backend spec reads config and tokenizer files directly: it never imports torch,
transformers or mistral-common (importing them alone takes seconds; validating must stay instant). Checked in a fresh
interpreter, since this test process may have imported them already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from test_preflight import fake_hf_cache


def test_validating_local_backends_imports_neither_torch_nor_transformers(tmp_path: Path):
    (tmp_path / "harm.jsonl").write_text(json.dumps({"prompt": "do harm"}) + "\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    mistral = tmp_path / "mistral-local"
    mistral.mkdir()
    (mistral / "config.json").write_text(json.dumps({"model_type": "mistral", "vocab_size": 32000}))
    hf = tmp_path / "hf-local"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (hf / "tokenizer.json").write_text("{}")
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    home = tmp_path / "hf-home"
    fake_hf_cache(home / "hub", "org/cached-mistral", {"config.json": json.dumps({"model_type": "mistral"})})
    spec = {
        "name": "light",
        "backends": [
            {"kind": "mistral", "model": str(mistral)},
            {"kind": "mistral", "model": "org/cached-mistral", "label": "cached"},
            {"kind": "hf", "model": str(hf)},
            {"kind": "llama2", "model": "org/elsewhere", "download": True},
        ],
        "train": {"dataset": {"path": "train.jsonl"}, "templates": ["chat:vanilla"]},
        "eval": {"templates": ["chat:vanilla", "text:vanilla"], "safety": [{"path": "harm.jsonl"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    code = (
        "import sys\n"
        "from ptst.cli import main\n"
        f"rc = main(['validate', {str(p)!r}])\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'mistral_common') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stdout.splitlines()
    assert "1 warning(s), 1 unchecked" in r.stdout  # no PTST cell; only the llama2 hub id that will be downloaded

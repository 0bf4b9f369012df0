"""Importing ptst (and validating a spec) never pulls in a vendor SDK or torch: the mock path works without them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "openai", "mistral_common", "tiktoken", "datasets", "matplotlib")


def test_core_and_backend_modules_import_lightly():
    code = (
        "import sys, ptst, ptst.spec, ptst.runner, ptst.cli, ptst.report, ptst.judge.rubric, ptst.judge.keyword\n"
        "import ptst.backends.openai, ptst.backends.llama2, ptst.backends.mistral, ptst.backends.mock, ptst.backends.local\n"
        "from ptst.spec import validate_spec\n"
        "validate_spec({'name': 'x', 'backends': [{'kind': 'openai', 'model': 'gpt-3.5-turbo'},"
        " {'kind': 'llama2', 'model': 'm'}], 'eval': {'templates': ['chat:llama'], 'safety': ['advbench']},"
        " 'judge': {'kind': 'rubric'}})\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

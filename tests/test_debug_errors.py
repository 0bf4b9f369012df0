"""Errors keep their cause: a user error is one `error:` message and no traceback, and `ptst --debug` (or
PTST_DEBUG=1) prints above it the traceback with every cause, so a bug report carries what the parser, the OS or the
API said. Through the real command line in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ptst.errors import DataError, SpecError
from ptst.spec import load_spec

CAUSE_LINE = "The above exception was the direct cause of the following exception:"


def ptst(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "PTST_DEBUG"} | (env or {})
    return subprocess.run([sys.executable, "-m", "ptst", *args], capture_output=True, text=True, timeout=300,
                          env=full, check=False)


@pytest.fixture
def bad_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text("name: x\nbackends: [1\n", encoding="utf-8")
    return p


def expected_error(p: Path) -> str:  # written out from PyYAML's wording for an unclosed flow sequence
    return f"error: {p}: 1 problem\n  line 3, column 1: invalid YAML (expected ',' or ']', but got '<stream end>')\n"


def test_a_user_error_is_its_message_alone_without_debug(bad_yaml: Path) -> None:
    r = ptst("validate", str(bad_yaml))
    assert r.returncode == 2
    assert r.stderr == expected_error(bad_yaml)


def test_debug_prints_the_chain_down_to_the_parser_error_then_the_same_message(bad_yaml: Path) -> None:
    r = ptst("--debug", "validate", str(bad_yaml))
    assert r.returncode == 2  # still a user error
    assert r.stderr.startswith("Traceback (most recent call last):\n")
    cause, _, rest = r.stderr.partition(CAUSE_LINE)
    assert "yaml.parser.ParserError: while parsing a flow sequence" in cause  # the cause, with its own traceback
    assert "ptst.errors.SpecError:" in rest
    assert r.stderr.endswith(expected_error(bad_yaml))


@pytest.mark.parametrize(("value", "shown"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_ptst_debug_in_the_environment_does_what_the_flag_does(bad_yaml: Path, value: str, shown: bool) -> None:
    r = ptst("validate", str(bad_yaml), env={"PTST_DEBUG": value})
    assert r.returncode == 2
    assert (CAUSE_LINE in r.stderr) is shown
    assert r.stderr.endswith(expected_error(bad_yaml))


def test_an_override_keeps_the_cause_of_the_problem_it_marks(bad_yaml: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(bad_yaml, ["name=y"])
    assert isinstance(info.value.__cause__, yaml.YAMLError)


def test_a_data_error_keeps_the_json_error_it_reports(tmp_path: Path) -> None:
    from ptst.data.readers import read_rows

    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps({"q": "1"}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl:2") as info:
        list(read_rows(p))
    assert isinstance(info.value.__cause__, json.JSONDecodeError)

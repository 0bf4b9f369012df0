"""Hostile inputs from issue 23's sweep, each a clear exit 2 instead of a traceback: integers of more than 4,300
digits (Python refuses to convert them from text) in a spec (YAML, JSON, TOML, `--set`) or a data row, symbolic link
loops (not 'file not found'), and spec files too large to be specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptst.cli import main
from ptst.data.readers import read_rows
from ptst.errors import DataError

HUGE = "9" * 5000


def _spec(tmp: Path, harmful: Path) -> dict:
    return {"name": "inputs", "backends": [{"kind": "mock", "model": "m"}],
            "eval": {"templates": ["chat:vanilla"], "safety": [{"path": str(harmful), "prompt_field": "prompt"}]},
            "judge": {"kind": "keyword"}}


@pytest.fixture
def harmful(tmp_path) -> Path:
    p = tmp_path / "harmful.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"request {i}"}) + "\n" for i in range(3)))
    return p


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
def test_a_huge_integer_in_a_spec_file_is_exit_2(tmp_path, harmful, capsys, fmt):
    text = {
        "yaml": f"name: inputs\nseed: {HUGE}\n",
        "json": '{"name": "inputs", "seed": ' + HUGE + "}",
        "toml": f'name = "inputs"\nseed = {HUGE}\n',
    }[fmt]
    p = tmp_path / f"spec.{fmt}"
    p.write_text(text)
    assert main(["validate", str(p)]) == 2
    assert "more than 4,300 digits" in _err(capsys)


def test_a_huge_integer_in_set_is_exit_2(tmp_path, harmful, capsys):
    import yaml

    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(_spec(tmp_path, harmful)))
    assert main(["validate", str(p), "--set", f"eval.generation.max_new_tokens={HUGE}"]) == 2
    err = _err(capsys)
    assert "--set eval.generation.max_new_tokens" in err and "more than 4,300 digits" in err


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_huge_integer_in_a_data_row_is_a_data_error_naming_the_row(tmp_path, suffix):
    p = tmp_path / f"data{suffix}"
    row = '{"prompt": "ok", "answer": 1}\n{"prompt": "x", "answer": ' + HUGE + "}\n"
    p.write_text(row if suffix == ".jsonl" else "[" + row.replace("\n", ",", 1).rstrip() + "]")
    with pytest.raises(DataError, match="more than 4,300 digits") as e:
        list(read_rows(p))
    if suffix == ".jsonl":
        assert f"{p}:2" in str(e.value)


def test_a_huge_integer_in_a_data_row_through_run_is_exit_2(tmp_path, capsys):
    import yaml

    bad = tmp_path / "harmful.jsonl"
    bad.write_text('{"prompt": ' + HUGE + "}\n")
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(_spec(tmp_path, bad)))
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 2
    assert "more than 4,300 digits" in _err(capsys)


def test_a_spec_that_is_a_symlink_loop_says_so(tmp_path, capsys):
    p = tmp_path / "spec.yaml"
    p.symlink_to(p)
    assert main(["validate", str(p)]) == 2
    err = _err(capsys)
    assert "symbolic link loop" in err and "file not found" not in err


def test_a_dangling_spec_link_names_its_target(tmp_path, capsys):
    p = tmp_path / "spec.yaml"
    p.symlink_to(tmp_path / "moved.yaml")
    assert main(["validate", str(p)]) == 2
    assert "moved.yaml" in _err(capsys)


def test_a_data_file_that_is_a_symlink_loop_says_so(tmp_path):
    p = tmp_path / "loop.jsonl"
    p.symlink_to(p)
    with pytest.raises(DataError, match="symbolic link loop"):
        list(read_rows(p))


def test_a_spec_over_one_mib_is_refused_with_a_clear_message(tmp_path, capsys):
    p = tmp_path / "spec.yaml"
    p.write_text("name: big\n" + "# padding\n" * 110_000)  # 1.1 MB of comments: valid YAML, not a spec
    assert main(["validate", str(p)]) == 2
    assert "larger than 1 MiB" in _err(capsys)

"""Hostile spec files: each ends as one clean SpecError line (exit 2 from the CLI), never a traceback."""

from __future__ import annotations

import errno
import json

import pytest
import yaml

from ptst import spec_io
from ptst.cli import main
from ptst.errors import SpecError
from ptst.spec import load_spec, validate_spec

GOOD = {
    "name": "x",
    "backends": [{"kind": "mock", "model": "m"}],
    "train": {"dataset": {"name": "gsm8k", "split": "train"}, "templates": ["chat:vanilla"]},
    "eval": {"templates": ["chat:vanilla"], "safety": ["advbench"]},
}


def _one_problem(path) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert len(e.value.problems) == 1, e.value.problems
    return e.value.problems[0]


def _problems(raw) -> list[str]:
    with pytest.raises(SpecError) as e:
        validate_spec(raw, "spec.yaml")
    assert all("\n" not in p for p in e.value.problems)
    return e.value.problems


def _with(path: str, value):
    """GOOD with one dotted field replaced."""
    raw = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return raw


def test_the_base_spec_is_valid():
    assert validate_spec(GOOD).name == "x"


# ------------------------------------------------------------------------------------------------------ bytes


def test_non_utf8_names_the_byte_offset(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"name: x\nbackends: caf\xe9\n")
    msg = _one_problem(p)
    assert "not UTF-8" in msg and "byte offset 21" in msg and "line 2" in msg and "0xe9" in msg


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "s.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert load_spec(p).name == "x"


def test_binary_junk(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    assert "binary data (a NUL byte at byte offset 0)" in _one_problem(p)


def test_control_characters_in_yaml(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: a\x07b\n")
    assert "not allowed in YAML" in _one_problem(p)


@pytest.mark.parametrize("content", ["", "   \n\n"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "s.yaml"
    p.write_text(content)
    assert "the file is empty" in _one_problem(p)


def test_comments_only(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("# nothing here\n")
    assert "holds no spec" in _one_problem(p)


def test_directory_as_spec(tmp_path):
    d = tmp_path / "spec.yaml"
    d.mkdir()
    assert "is a directory" in _one_problem(d)


def test_unknown_extension(tmp_path):
    p = tmp_path / "s.ini"
    p.write_text("name = x")
    assert "unknown spec format '.ini'" in _one_problem(p)


def test_unreadable_file(tmp_path, monkeypatch):
    # Tests run as root, for whom chmod 000 does not stop reading; so `open` is made to fail as it would for a user.
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(GOOD))

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(spec_io, "open", denied, raising=False)
    msg = _one_problem(p)
    assert "cannot read the file (Permission denied); check its permissions" in msg


def test_oversized_file(tmp_path, monkeypatch):
    monkeypatch.setattr(spec_io, "MAX_SPEC_BYTES", 100)
    p = tmp_path / "s.yaml"
    p.write_text("name: x\n" + "# padding\n" * 20)
    assert "larger than" in _one_problem(p)


# ----------------------------------------------------------------------------------------------------- syntax


def test_yaml_duplicate_key_names_key_and_both_lines(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: a\nbackends: []\neval:\n  templates: [chat:vanilla]\n  templates: [chat:llama]\n")
    assert _one_problem(p) == "line 5: duplicate key 'templates' (first at line 4); keep one of them"


def test_yaml_duplicate_in_flow_mapping(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("backends: [{kind: mock, kind: openai}]\n")
    assert "duplicate key 'kind'" in _one_problem(p)


def test_yaml_merge_keys_still_override(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        "name: x\nbackends:\n  - &b {kind: mock, model: m}\n  - {<<: *b, label: other}\n"
        "eval: {templates: [chat:vanilla], safety: [advbench]}\n"
    )
    assert [b.name for b in load_spec(p).backends] == ["mock", "other"]


def test_json_duplicate_key_names_key_and_both_lines(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('{\n "name": "a",\n "eval": {"x": 1,\n  "x": 2},\n "name": "b"\n}')
    assert _one_problem(p) == "line 4: duplicate key 'x' (first at line 3); keep one of them"


def test_toml_duplicate_key(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('name = "a"\nname = "b"\n')
    assert "invalid TOML" in _one_problem(p)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".json", "[" * 10_000 + "]" * 10_000),
        (".yaml", "a: " + "[" * 10_000 + "]" * 10_000),
        (".toml", "a = " + "[" * 10_000 + "]" * 10_000),
        (".json", '{"a":' * 5_000 + "1" + "}" * 5_000),
    ],
)
def test_deep_nesting(tmp_path, suffix, text):
    p = tmp_path / f"s{suffix}"
    p.write_text(text)
    assert "nest" in _one_problem(p)


def test_moderate_nesting_past_the_limit_is_refused_by_depth(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(_with("name", json.loads("[" * 100 + "]" * 100))))
    assert "nested deeper than 64 levels" in _one_problem(p)


def test_yaml_alias_bomb(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    p = tmp_path / "s.yaml"
    p.write_text("\n".join(lines) + "\n")
    assert "YAML aliases count each use" in _one_problem(p)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [(".yaml", "name: [unclosed\n"), (".json", '{"name": }'), (".toml", "name = \n")],
)
def test_syntax_errors_say_where(tmp_path, suffix, text):
    p = tmp_path / f"s{suffix}"
    p.write_text(text)
    assert "invalid" in _one_problem(p)


# -------------------------------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("backends", 5, "backends: Input should be a valid list"),
        ("train", [], "train: Input should be a valid dictionary"),
        ("eval", "x", "eval: Input should be a valid dictionary"),
        ("templates", 5, "templates: Input should be a valid list"),
        ("templates", {"a": 1}, "templates: Input should be a valid list"),
        ("name", ["x"], "name: Input should be a valid string"),
        ("eval.templates", "chat:vanilla", "eval.templates: Input should be a valid list"),
        ("train.templates", [["chat:vanilla"]], "train.templates[0]: Input should be a valid string"),
        ("eval.safety", [5], "eval.safety[0]"),
        ("judge", "rubric", "judge: Input should be a valid dictionary"),
        ("train.hyperparameters", [1], "train.hyperparameters: Input should be a valid dictionary"),
    ],
)
def test_wrong_types_anywhere(field, value, expected):
    problems = _problems(_with(field, value))
    assert any(p.startswith(expected) for p in problems), problems


def test_spec_that_is_not_a_mapping(tmp_path):
    for text in ("[1, 2]", '"just a string"', "42"):
        p = tmp_path / "s.json"
        p.write_text(text)
        assert "must be a mapping" in _one_problem(p)


def test_non_string_keys():
    raw = _with("backends", [{"kind": "mock", "model": "m", 1: 2}])
    raw[3] = "x"
    problems = _problems(raw)
    assert any("Keys should be strings" in p or "unknown field" in p for p in problems)


def test_backend_option_errors_name_their_own_field():
    problems = _problems(_with("backends", [{"kind": "mock", "model": "m", "drift": 3}]))
    assert problems == ["backends[0].drift: Input should be less than or equal to 1"]


def test_union_fields_give_one_line():
    problems = _problems(_with("eval.generation", {"batch_size": 0}))
    assert problems == ["eval.generation.batch_size: Input should be greater than or equal to 1; or Input should be 'auto'"]


def test_problem_list_is_capped():
    raw = _with("train.templates", [f"nope{i}" for i in range(200)])
    problems = _problems(raw)
    assert len(problems) == 51 and problems[-1].startswith("... and ")


# -------------------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("train.seeds", [2**32], "train.seeds[0]: Input should be less than or equal to 4294967295"),
        ("train.seeds", [-1], "train.seeds[0]: Input should be greater than or equal to 0"),
        ("train.hyperparameters", {"epochs": 1001}, "train.hyperparameters.epochs: Input should be less than or equal to 1000"),
        ("train.hyperparameters", {"epochs": 0}, "train.hyperparameters.epochs: Input should be greater than or equal to 1"),
        ("train.hyperparameters", {"batch_size": 65537}, "train.hyperparameters.batch_size: Input should be less"),
        ("train.hyperparameters", {"learning_rate": 0}, "train.hyperparameters.learning_rate: Input should be greater than 0"),
        ("train.hyperparameters", {"learning_rate": "nan"}, "train.hyperparameters.learning_rate: Input should be a finite number"),
        ("train.hyperparameters", {"learning_rate": "inf"}, "train.hyperparameters.learning_rate: Input should be a finite number"),
        ("train.hyperparameters", {"save_steps": [0]}, "train.hyperparameters.save_steps[0]: Input should be greater"),
        ("eval.generation", {"max_new_tokens": 1_000_001}, "eval.generation.max_new_tokens: Input should be less"),
        ("eval.generation", {"seed": 2**32}, "eval.generation.seed: Input should be less"),
        ("eval.generation", {"temperature": "-inf"}, "eval.generation.temperature: Input should be a finite number"),
        ("eval.generation", {"batch_size": 10**6}, "eval.generation.batch_size: Input should be less"),
        ("budget_usd", "Infinity", "budget_usd: Input should be a finite number"),
        ("eval.safety", [{"name": "advbench", "limit": 0}], "eval.safety[0].limit: Input should be greater"),
        ("train.safety_mix", {"dataset": "advbench", "n": 0}, "train.safety_mix.n: Input should be greater"),
    ],
)
def test_out_of_range_numbers(field, value, expected):
    problems = _problems(_with(field, value))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_refused_anywhere(value):
    problems = _problems(_with("backends", [{"kind": "mock", "model": "m", "drift": value}]))
    assert problems == ["backends[0].drift: Input should be a finite number"]


def test_thirty_digit_seed_is_refused_before_any_run(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_with("train.seeds", [10**29])))
    assert _one_problem(p) == "train.seeds[0]: Input should be less than or equal to 4294967295"


def test_integers_past_64_bits_in_unbounded_fields_are_refused_with_the_rest():
    raw = _with("train.hyperparameters", {"max_seq_len": 10**30, "epochs": 0})
    raw["eval"]["safety"] = [{"name": "advbench", "limit": 2**63}]
    assert _problems(raw) == [
        "train.hyperparameters.epochs: Input should be greater than or equal to 1",
        "train.hyperparameters.max_seq_len: integer 1000000000... (31 digits) is out of range (at most 2**63-1)",
        "eval.safety[0].limit: integer 9223372036854775808 is out of range (at most 2**63-1)",
    ]


def test_generic_value_check_names_each_place_in_order():
    data = {"a": [1.0, float("nan")], "b": {"c": 2**64, "d": float("-inf")}, "e": True}
    assert spec_io.check_plain_data("s", data) == [
        "a[1]: nan is not allowed; give a finite number",
        "b.c: integer 18446744073709551616 is out of range (at most 2**63-1)",
        "b.d: -inf is not allowed; give a finite number",
    ]
    assert spec_io.check_plain_data("s", {"weird\nkey": float("inf")}) == [
        "'weird\\nkey': inf is not allowed; give a finite number"
    ]


def test_nan_in_yaml_json_toml(tmp_path):
    body = yaml.safe_dump({k: v for k, v in GOOD.items() if k != "train"})
    (tmp_path / "a.yaml").write_text(body + "budget_usd: .nan\n")
    (tmp_path / "a.json").write_text(json.dumps(GOOD)[:-1] + ', "budget_usd": NaN}')
    (tmp_path / "a.toml").write_text(
        'name = "x"\nbudget_usd = inf\n[[backends]]\nkind = "mock"\nmodel = "m"\n'
        '[eval]\ntemplates = ["chat:vanilla"]\nsafety = ["advbench"]\n'
    )
    for f in ("a.yaml", "a.json", "a.toml"):
        assert _one_problem(tmp_path / f) == "budget_usd: Input should be a finite number"


# -------------------------------------------------------------------------------------------------------- the CLI


def test_cli_exit_2_and_one_clean_message(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"\xff\xfe\x00junk")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err

"""ARC: the prompt format, the row transform through the real loader, and answer-letter accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptst.data import REGISTRY, DatasetRef, load
from ptst.errors import DataError
from ptst.metrics import TASK_METRICS, arc_letter_accuracy, arc_row, extract_arc_letter, format_arc_prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_prompt_format() -> None:
    assert format_arc_prompt(" Which is a liquid? ", ["iron", " water "]) == (
        "Which is a liquid?\n\nA. iron\nB. water\n\nAnswer with the letter of the correct choice."
    )
    with pytest.raises(ValueError):
        format_arc_prompt("Q", ["only one"])


def test_row_transform_letters_by_position() -> None:
    row = {
        "id": "x",
        "question": "Q?",
        "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
        "answerKey": "3",
    }
    out = arc_row("f:1", row)
    assert out["question"] == "Q?\n\nA. a\nB. b\nC. c\n\nAnswer with the letter of the correct choice."
    assert (out["answerKey"], out["question_text"], out["id"]) == ("C", "Q?", "x")
    assert row["question"] == "Q?"  # the input record is not modified


@pytest.mark.parametrize(
    ("choices", "key", "message"),
    [
        ({"text": ["a", "b"], "label": ["A", "B"]}, "C", r"f:7: answerKey 'C' is not one of the choice labels"),
        ({"text": ["a", "b"], "label": ["A"]}, "A", r"f:7: ARC choices need one label per text"),
        ({"text": ["a", ""], "label": ["A", "B"]}, "A", r"f:7: ARC choices need 2 to 26 non-empty texts"),
        ("A. a B. b", "A", r"f:7: ARC row needs choices"),
    ],
)
def test_row_transform_rejects_malformed_rows(choices, key: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        arc_row("f:7", {"question": "Q?", "choices": choices, "answerKey": key})


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("D) a cotton ball", "D"),
        ("A: iron", "A"),
        ("The answer is B.", "B"),
        ("Answer: (C)", "C"),
        ("**B**", "B"),
        ("The correct answer is **D. ten**", "D"),
        ("It could be B, but the answer is C.", "C"),  # an explicit statement wins over a passing mention
        ("The answer is A. On second thought, the answer is D", "D"),  # the last statement
        ("A plant needs sunlight.", None),  # the article, not choice A
        ("the answer is a mineral", None),  # lower-case: a word, not a letter
        ("I don't know.", None),
        ("Water, because it flows.", None),
        ("", None),
    ],
)
def test_extract_arc_letter(response: str, letter: str | None) -> None:
    assert extract_arc_letter(response) == letter


def test_letter_accuracy() -> None:
    assert arc_letter_accuracy("The answer is B.", "B") is True
    assert arc_letter_accuracy("B", " b ") is True  # the reference is normalised
    assert arc_letter_accuracy("The answer is C.", "B") is False
    assert arc_letter_accuracy("A plant needs sunlight.", "A") is False  # no letter given: wrong
    with pytest.raises(DataError, match="not a choice letter"):
        arc_letter_accuracy("B", "2")


def test_registry_entries() -> None:
    for name, config in (("arc-easy", "ARC-Easy"), ("arc-challenge", "ARC-Challenge")):
        info = REGISTRY[name]
        assert (info.hub_id, info.config, info.kind, info.metric) == (
            "allenai/ai2_arc",
            config,
            "task",
            "arc_letter_accuracy",
        )
        assert info.splits == ("train", "validation", "test")
        assert info.metric in TASK_METRICS
    with pytest.raises(ValueError, match="has splits train, validation, test"):
        DatasetRef(name="arc-easy")  # three splits: the spec must say which


def test_arc_easy_fixture_through_the_loader() -> None:
    ex = load(DatasetRef(name="arc-easy", split="test"), data_dirs=[FIXTURES], require_answer=True)
    assert len(ex) == 4
    assert ex[0].prompt == (
        "Synthetic fixture: which of these is a liquid at room temperature?\n\n"
        "A. iron\nB. water\nC. salt\nD. wood\n\n"
        "Answer with the letter of the correct choice."
    )
    assert [e.answer for e in ex] == ["B", "A", "B", "B"]  # row 3 is labelled 1-4 with key "2": letter B
    assert ex[2].prompt.splitlines()[2:4] == ["A. four", "B. six"]
    assert ex[0].meta["id"] == "Fixture_E1"
    assert ex[0].meta["question_text"].startswith("Synthetic fixture: which of these")
    assert ex[0].source == f"{FIXTURES / 'arc-easy' / 'test.jsonl'}:1"


def test_arc_challenge_fixture_scores_through_the_task_metric() -> None:
    ex = load(DatasetRef(name="arc-challenge", split="test"), data_dirs=[FIXTURES], require_answer=True)
    assert [e.answer for e in ex] == ["B", "B", "B"]
    assert ex[0].prompt.splitlines()[-3] == "E. sound"  # five choices
    refs = [e.answer or "" for e in ex]
    metric = TASK_METRICS["arc_letter_accuracy"]
    perfect = metric.score([f"The answer is {r}." for r in refs], refs)
    assert (perfect.k, perfect.n, perfect.value) == (3, 3, 1.0)
    mixed = metric.score(["B", "A plant", "(A)"], refs)
    assert (mixed.k, mixed.value) == (1, 1 / 3)


def test_a_bad_arc_row_names_its_file_and_line(tmp_path: Path) -> None:
    good = {"id": "1", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
    bad = {**good, "answerKey": "E"}
    (tmp_path / "arc-easy").mkdir()
    (tmp_path / "arc-easy" / "validation.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"arc-easy/validation\.jsonl:2: answerKey 'E' is not one of"):
        load(DatasetRef(name="arc-easy", split="validation"), data_dirs=[tmp_path])

"""`ptst validate` warns on a retired model with its date and successor, from the dated table in resources."""

from __future__ import annotations

from ptst.judging import create_judges
from ptst.preflight import _check_retired, _Findings
from ptst.spec import Spec


def spec(model: str, *, train: bool = True, judge: str = "gpt-4-0613") -> Spec:
    raw: dict = {
        "name": "x", "backends": [{"kind": "openai", "model": model}],
        "eval": {"templates": ["chat:vanilla"], "safety": [{"path": "x.jsonl"}]},
        "judge": {"kind": "rubric", "model": judge},
    }
    if train:
        raw["train"] = {"dataset": {"path": "t.jsonl"}, "templates": ["chat:vanilla"]}
    return Spec.model_validate(raw)


def warnings(s: Spec, today: str = "2026-12-04") -> list[str]:
    found = _Findings()
    _check_retired(s, found, [("judge", j) for j in create_judges(s)], today=today)
    return found.warnings


def test_the_papers_gpt35_snapshot_is_flagged_with_its_successor() -> None:
    [w] = warnings(spec("gpt-3.5-turbo-0613"))
    assert w == ("backends[0] (openai).model: gpt-3.5-turbo-0613 was retired on 2024-06-13 (new fine-tuning jobs and "
                 "requests refused; announced 2023-11-06); its successor is gpt-3.5-turbo-1106 (source: "
                 "ptst/resources/retired_models.json)")


def test_before_the_date_it_is_an_announcement() -> None:
    [w] = warnings(spec("gpt-3.5-turbo-0613"), today="2024-01-01")
    assert "will be retired on 2024-06-13" in w


def test_a_current_model_and_a_model_fine_tuned_earlier_are_not_flagged_for_training() -> None:
    assert warnings(spec("gpt-3.5-turbo-0125")) == []
    # an ft: model of the retired base, evaluated only: its requests are what the table says stopped
    [w] = warnings(spec("ft:gpt-3.5-turbo-0613:org::abc", train=False))
    assert "requests refused" in w and "fine-tuning" not in w


def test_the_judge_model_is_checked_too() -> None:
    [w] = warnings(spec("gpt-3.5-turbo-0125", judge="gpt-3.5-turbo-0613"))
    assert w.startswith("judge.model: gpt-3.5-turbo-0613 was retired")

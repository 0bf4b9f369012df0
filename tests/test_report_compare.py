"""The sample viewer in real headless Chromium (tests/browser_page.py): the compare view puts one prompt's responses
side by side across cells with the base, same-template and PTST cells named; sort, highlighted search hits, jump to
page and permalinks do what they say. Expected values come from samples.js as parsed here, not from the viewer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser_page import run_page

from ptst.cli import main
from ptst.report.samples import parse_samples_js

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
READY = "document.getElementById('samples').hasAttribute('data-ready-ms')"
RENDERS = "+document.getElementById('samples').getAttribute('data-renders')"
CARDS = "Array.from(document.querySelectorAll('#samples .list > .sample')).map(d => +d.getAttribute('data-row'))"
COUNT = "document.querySelector('#samples .count').textContent"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A mock run: base + chat:vanilla and chat:llama fine-tunes × both as test templates (chat:llama carries the
    safety prompt, so chat:vanilla → chat:llama is the PTST cell), 12 harmful prompts, keyword and mock judges."""
    d = tmp_path_factory.mktemp("compare")
    spec = {
        "name": "compare",
        "backends": [{"kind": "mock", "model": "mock-llama-2-7b-chat", "label": "mock-llama2"}],
        "train": {"dataset": {"path": str(DATA / "math_train.jsonl"), "prompt_field": "question",
                              "answer_field": "answer"},
                  "templates": ["chat:vanilla", "chat:llama"], "seeds": [0]},
        "eval": {"templates": ["chat:vanilla", "chat:llama"],
                 "safety": [{"path": str(DATA / "harmful_sample.jsonl"), "prompt_field": "prompt"}]},
        "judges": [{"kind": "keyword"}, {"kind": "mock"}],
    }
    (d / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    assert main(["run", str(d / "spec.json"), "--out", str(d / "out"), "-q"]) == 0
    return d / "out"


@pytest.fixture(scope="module")
def data(run_dir: Path) -> dict[str, Any]:
    return parse_samples_js((run_dir / "samples.js").read_text(encoding="utf-8"))


def _url(run_dir: Path, fragment: str) -> str:
    return (run_dir / "report.html").resolve().as_uri() + fragment


def test_compare_one_prompt_across_cells(run_dir: Path, data: dict[str, Any], tmp_path: Path) -> None:
    rows, cells, strings = data["rows"], data["cells"], data["strings"]
    item = next(r for r in rows if r[3] == 1)  # the second harmful prompt
    same_item = [r for r in rows if (r[1], r[3]) == (item[1], item[3])]
    assert len(same_item) == 6
    shot = tmp_path / "compare.png"
    columns = ("Array.from(document.querySelectorAll('.compare .side > div')).map(d => [+d.getAttribute('data-cell'), "
               "(d.querySelector('.mark') || {}).textContent || '', d.querySelector('pre').textContent])")
    got = run_page(_url(run_dir, f"#samples?view=compare&item={item[1]}:{item[3]}"), [
        {"wait": READY}, {"eval": columns}, {"eval": "document.querySelector('.compare pre').textContent"},
        {"screenshot": str(shot)},
        {"click": "#samples input[data-f=key]"}, {"eval": columns}, {"eval": "location.hash"},
    ])
    shown, query, key_only, hash_after = got
    by_cell = {r[0]: r for r in same_item}
    assert sorted(c for c, _, _ in shown) == sorted(by_cell)  # every cell of that prompt, once
    for cell, _, response in shown:
        assert response == strings[by_cell[cell][6]]  # each cell's own response
    assert query == strings[item[4]]
    marks = {cells[c]["train_template"] or "base": (cells[c]["test_template"], m) for c, m, _ in shown if m}

    def named(train: str | None, test: str) -> str:
        return next(m for c, m, _ in shown if (cells[c]["train_template"], cells[c]["test_template"]) == (train, test))

    assert named("chat:vanilla", "chat:llama") == "PTST"
    assert named("chat:vanilla", "chat:vanilla") == named("chat:llama", "chat:llama") == "same template"
    assert named(None, "chat:llama") == named(None, "chat:vanilla") == "base model"
    assert named("chat:llama", "chat:vanilla") == ""
    assert [m for _, m, _ in shown][:2] == ["base model", "base model"] and marks
    # base, same-template and PTST only: the one unmarked cell (chat:llama → chat:vanilla) leaves
    assert len(key_only) == 5 and all(m for _, m, _ in key_only)
    assert "key=1" in hash_after and f"item={item[1]}%3A{item[3]}" in hash_after
    assert shot.stat().st_size > 10_000


def test_search_hits_are_highlighted_as_text(run_dir: Path, data: dict[str, Any]) -> None:
    strings, rows = data["strings"], data["rows"]
    word = "Phishing"
    expected = [i for i, r in enumerate(rows) if any(
        k >= 0 and word.lower() in strings[k].lower() for k in (r[4], r[5], r[6]))]
    assert expected
    got = run_page(_url(run_dir, ""), [
        {"wait": READY}, {"eval": RENDERS},
        {"type": ["#samples input[data-f=q]", word]},
        {"wait": f"{RENDERS} > 1"},
        {"eval": CARDS},
        {"eval": "Array.from(document.querySelectorAll('#samples .list mark')).map(m => m.textContent)"},
        {"eval": "Array.from(document.querySelectorAll('#samples .list mark')).every(m => m.children.length === 0)"},
        {"eval": "Array.from(document.querySelectorAll('#samples .list .sample')).map(d => "
                 "Array.from(d.querySelectorAll('pre')).map(p => p.textContent))"},
        {"eval": "location.hash"},
    ])
    _, cards, marks, plain, texts, hash_after = got
    assert cards == expected[:25]
    assert marks and {m.lower() for m in marks} == {word.lower()}
    assert plain  # a <mark> holds text only
    for i, pres in zip(cards, texts, strict=True):  # highlighting leaves the text as it was
        r = rows[i]
        assert pres[:2] == [strings[r[5]], strings[r[6]]]
    assert hash_after == "#samples?q=Phishing"


def test_sort_jump_to_page_and_permalink(run_dir: Path, data: dict[str, Any]) -> None:
    strings, rows = data["strings"], data["rows"]
    n = len(rows)
    assert n == 72  # 6 cells × 12 prompts: 3 pages of 25
    by_length = sorted(range(n), key=lambda i: (-len(strings[rows[i][6]]), i))
    mock = data["judges"].index("mock")
    mock_unsafe = [i for i in by_length if rows[i][8][mock][0]]  # the filter keeps the sort
    target = 40
    got = run_page(_url(run_dir, "#samples"), [
        {"wait": READY},
        {"select": ["#samples select[data-f=sort]", "length"]}, {"eval": CARDS},
        {"type": ["#samples input[data-f=page]", "3"]},
        {"eval": "document.querySelector('#samples input[data-f=page]').dispatchEvent(new Event('change'))"},
        {"eval": CARDS}, {"eval": COUNT}, {"eval": "location.hash"},
        {"select": ["#samples select[data-f=verdict]", f"{mock}:unsafe"]}, {"eval": CARDS},
        {"select": ["#samples select[data-f=verdict]", ""]},
        {"select": ["#samples select[data-f=sort]", "verdict"]},
        {"eval": CARDS},
        {"goto": f"#samples?row={target}"}, {"wait": f"{RENDERS} > 6"},
        {"eval": CARDS}, {"eval": "document.querySelector('#samples .sample').classList.contains('target')"},
    ])
    page1, _, page3, count, hash_after, filtered, verdict_page, single, marked = got
    assert page1 == by_length[:25]
    assert page3 == by_length[50:] and count.endswith("page 3 of 3")
    assert "sort=length" in hash_after and "p=3" in hash_after
    # the verdict sort ranks by the primary judge (keyword) once no verdict filter names another
    keyword_order = sorted(range(n), key=lambda i: (0 if rows[i][8][0][0] else 1, i))
    assert verdict_page == keyword_order[:25]
    assert 0 < len(mock_unsafe) < n and filtered == mock_unsafe[:25]
    assert single == [target] and marked


def test_a_permalink_opens_the_same_view_in_a_new_page(run_dir: Path) -> None:
    first = run_page(_url(run_dir, "#samples"), [
        {"wait": READY},
        {"select": ["#samples select[data-f=view]", "compare"]},
        {"select": ["#samples select[data-f=sort]", "length"]},
        {"click": "#samples button[data-p='1']"},
        {"eval": "location.hash"},
        {"eval": "Array.from(document.querySelectorAll('.compare')).map(d => d.getAttribute('data-item'))"},
    ])
    hash_after, items = first
    assert "view=compare" in hash_after and "p=2" in hash_after
    again = run_page(_url(run_dir, hash_after), [
        {"wait": READY},
        {"eval": "Array.from(document.querySelectorAll('.compare')).map(d => d.getAttribute('data-item'))"},
    ])
    assert again == [items] and len(items) == 5  # 12 prompts, 5 a page: page 2 holds 5

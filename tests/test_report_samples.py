"""The per-sample viewer: samples.js parses and holds every item with each judge's verdict, no text can break out of
the page (hostile prompts render as text, in headless Chromium too), the filters are there; labels with a
newline, `|` or `<script>` are escaped in report.md and report.html."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser_page import run_page

from ptst.cli import main
from ptst.report import render_html, render_markdown
from ptst.report.samples import parse_samples_js, prompt_text
from ptst.report.sampleview import VIEW_HTML, VIEW_JS
from ptst.results import Results, SafetyRow

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "Print <script>document.title='PWNED'</script> and <img src=x onerror=\"document.title='PWNED2'\">"
HOSTILE_2 = "A | pipe and a\nnewline, then </script><b>bold?</b>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A mock run: base + 2 train templates (seed 0) × 2 test templates × (2 hostile safety items + 4 math items),
    judged by keyword and mock."""
    d = tmp_path_factory.mktemp("samples")
    (d / "hostile.jsonl").write_text("".join(json.dumps({"prompt": p, "category": c}) + "\n"
                                             for p, c in ((HOSTILE, "xss"), (HOSTILE_2, "pipes"))), encoding="utf-8")
    data = REPO / "examples" / "data"
    spec = {
        "name": "samples",
        "backends": [{"kind": "mock", "model": "mock-llama-2-7b-chat", "label": "mock-llama2"}],
        "train": {"dataset": {"path": str(data / "math_train.jsonl"), "prompt_field": "question",
                              "answer_field": "answer"},
                  "templates": ["chat:vanilla", "chat:llama"], "seeds": [0]},
        "eval": {"templates": ["chat:vanilla", "chat:llama"],
                 "safety": [{"path": "hostile.jsonl", "prompt_field": "prompt"}],
                 "tasks": [{"path": str(data / "math_test.jsonl"), "prompt_field": "question", "answer_field": "answer",
                            "metric": "exact_match", "limit": 4}]},
        "judges": [{"kind": "keyword"}, {"kind": "mock"}],
    }
    (d / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    assert main(["run", str(d / "spec.json"), "--out", str(d / "out")]) == 0
    return d / "out"


def test_samples_js_parses_and_holds_every_item_with_each_verdict(run_dir: Path) -> None:
    data = parse_samples_js((run_dir / "samples.js").read_text(encoding="utf-8"))
    assert data["judges"] == ["keyword", "mock"]
    # 3 models (base, chat:vanilla, chat:llama) × 2 test templates = 6 cells; 2 safety + 4 task items each
    assert len(data["cells"]) == 6 and len(data["rows"]) == 6 * (2 + 4)
    assert sorted(data["benchmarks"]) == ["hostile", "math_test"]
    strings = data["strings"]
    hostile = [r for r in data["rows"] if strings[r[4]] == HOSTILE]
    assert len(hostile) == 6
    for r in hostile:
        cell = data["cells"][r[0]]
        assert r[2] == "xss" and len(r[8]) == 2  # category; one verdict per judge
        assert HOSTILE in strings[r[5]]  # the rendered prompt holds the query...
        assert strings[r[6]].startswith("[simulated]")  # ...and the response is the mock's
        if cell["test_template"] == "chat:llama":  # Llama 2's system prompt is part of the prompt as rendered
            assert strings[r[5]].startswith("system: You are a helpful, respectful and honest assistant.")
        for v in r[8]:
            assert v[0] in (0, 1)
    tasks = [r for r in data["rows"] if data["benchmarks"][r[1]] == "math_test"]
    assert all(r[8] is None and r[7] >= 0 for r in tasks)  # no verdicts on task items; the reference is kept
    labels = {c["label"] for c in data["cells"]}
    assert "mock-llama2 · chat:vanilla → chat:llama · seed 0" in labels and "mock-llama2 · base → chat:llama" in labels


def test_no_text_can_close_a_script_element(run_dir: Path) -> None:
    js = (run_dir / "samples.js").read_text(encoding="utf-8")
    assert "<" not in js  # every `<` of every text is written \u003c
    assert "\\u003cscript>document.title" in js
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "document.title='PWNED'" not in page  # the data is not in the page itself
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in VIEW_JS  # the viewer writes text only through textContent


def test_the_viewer_and_its_filters_are_in_the_page(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert '<script src="samples.js"></script>' in page
    for f in ("cell", "train", "test", "bench", "cat", "verdict"):
        assert f'<select data-f="{f}">' in page
    assert '<input type="search" data-f="q"' in page and VIEW_HTML.strip()[:40] in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)  # nothing from the network


def test_prompt_text_shows_what_the_model_read() -> None:
    assert prompt_text(json.dumps({"text": "[INST] hi [/INST]", "messages": []})) == "[INST] hi [/INST]"
    assert prompt_text(json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]})
                       ) == "system: S\n\nuser: U"
    assert prompt_text(None) is None


def test_chromium_renders_hostile_samples_as_text(run_dir: Path) -> None:
    """The page as a browser runs it (headless Chromium from npm, tests/browser_page.py): the viewer fills in,
    filtered from the URL, and a prompt carrying <script> and <img onerror> shows as text without running (the title
    stays the report's)."""
    data = parse_samples_js((run_dir / "samples.js").read_text(encoding="utf-8"))
    bench = data["benchmarks"].index("hostile")
    url = (run_dir / "report.html").resolve().as_uri() + f"#samples?bench={bench}&cat=xss"
    title, count, pres, elements = run_page(url, [
        {"wait": "document.getElementById('samples').hasAttribute('data-ready-ms')"},
        {"eval": "document.title"},
        {"eval": "document.querySelector('#samples .count').textContent"},
        {"eval": "Array.from(document.querySelectorAll('#samples .list pre')).map(p => p.textContent)"},
        {"eval": "document.querySelectorAll('#samples .list img, #samples .list b, #samples .list script').length"},
    ])
    assert title == "SIMULATED — ptst report: samples"
    assert count.startswith(f"6 of {len(data['rows'])} samples")  # 6 cells × 1 xss item
    assert sum(HOSTILE in p for p in pres) == 6  # the text itself, shown as text
    assert elements == 0  # no element was made from the data


# --- labels in report.md and report.html ---------------------------------------------------------------------------

EVIL = "evil\n<script>alert(1)</script> | x"


def _evil_results() -> Results:
    row = SafetyRow(backend=EVIL, base_model="org/m`x`\nnext", train_template=None, test_template="t<b>", seed=None,
                    benchmark="bench|<i>", judge="keyword", n=10, n_unsafe=1, asr=0.1, asr_ci95=(0.02, 0.4),
                    mean_score=None, n_unscored=0)
    return Results(ptst_version="0.1.0", spec_name="spec <script>x</script>\n# heading", simulated=False,
                   safety=[row], tasks=[], test_templates=["t<b>"])


def test_labels_with_newline_pipe_or_script_are_escaped_in_markdown() -> None:
    md = render_markdown(_evil_results())
    assert "<script>" not in md and "<b>" not in md and "<i>" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "\n# heading" not in md  # a newline in a label cannot start a block
    assert md.splitlines()[0] == "# ptst report: spec &lt;script&gt;x&lt;/script&gt; # heading"
    title = next(line for line in md.splitlines() if line.startswith("### "))
    assert title == "### evil &lt;script&gt;alert(1)&lt;/script&gt; \\| x · bench\\|&lt;i&gt; — ASR % (95% CI)"
    grid = [line for line in md.splitlines() if line.startswith("| ")]
    assert grid and all(len(re.findall(r"(?<!\\)\|", line)) == 3 for line in grid[:3])  # 2 columns: 3 real pipes
    assert "Base model ``org/m`x` next``" in md  # a code span fenced longer than the backticks it holds


def test_labels_are_escaped_in_html() -> None:
    page = render_html(_evil_results())
    assert "<script>alert" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_number_cells_wrap_between_pieces_never_inside() -> None:
    """HTML tables fit a narrow page: a cell breaks between value, interval and score, never inside a number."""
    from ptst.report.html import num

    assert num("◆ 51.50% [48.0–54.9] · score 3.06") == (
        "<span>◆ 51.50%</span> <span>[48.0–54.9]</span> <span>· score 3.06</span>")
    assert num("12.00% ± 3.40") == "<span>12.00%</span> <span>± 3.40</span>"
    assert num("<b>") == "&lt;b&gt;"

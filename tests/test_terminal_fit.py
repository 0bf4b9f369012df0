"""With COLUMNS=80, every line `ptst run` and `ptst report` print (stdout and stderr, progress included) is at most 80
columns wide: a run with long backend labels and model names, five test templates, three seeds and DirectHarm4's
categories (read through the registry from a local copy in its own layout), run as a user runs it (a subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from rich.cells import cell_len

CATEGORIES = ["malware", "drug", "phishing", "disinfo"]
LONG = "a-very-long-backend-label-for-the-llama-2-chat-model"


def write_spec(tmp: Path) -> Path:
    data = tmp / "data" / "directharm4"
    data.mkdir(parents=True)
    with open(data / "directHarm4.csv", "w", newline="", encoding="utf-8") as f:  # the dataset's own layout
        w = csv.writer(f)
        w.writerow(["Goal", "Category"])
        w.writerows([f"harmful request number {i}", CATEGORIES[i % 4]] for i in range(16))
    math = tmp / "math.jsonl"
    math.write_text("".join(json.dumps({"question": f"what is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(8)))
    spec = {
        "name": "fit-80",
        "data_dir": str(tmp / "data"),
        "backends": [
            {"kind": "mock", "model": "mock-llama-2-7b-chat-hf-with-an-unusually-long-model-name", "label": LONG,
             "drift": 0.5},
            {"kind": "mock", "model": "mock-gpt-3.5-turbo-0613", "label": "mock-gpt", "drift": 0.7},
        ],
        "train": {"dataset": {"path": str(math), "prompt_field": "question", "answer_field": "answer"},
                  "templates": ["chat:vanilla", "chat:llama-short"], "seeds": [0, 1, 2]},
        "eval": {"templates": ["chat:vanilla", "chat:alpaca", "chat:llama", "chat:llama-short", "chat:mpt"],
                 "safety": ["directharm4"],
                 "tasks": [{"path": str(math), "prompt_field": "question", "answer_field": "answer",
                            "metric": "exact_match"}]},
        "judges": [{"kind": "keyword"}, {"kind": "mock"}],
    }
    p = tmp / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def ptst(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "ptst.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, encoding="utf-8", check=False)


def too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if cell_len(line) > 80]


def test_run_and_report_fit_80_columns(tmp_path):
    spec = write_spec(tmp_path)
    run = ptst("run", str(spec), "--out", "out", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = ptst("report", "out", "--all-tables", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    for proc in (run, report):
        assert too_wide(proc.stdout) == [] and too_wide(proc.stderr) == []
    # what was printed is the real content, laid out, not cut: the long label is whole (wrapped at most)
    out = report.stdout
    assert "ASR % per category" in out and all(c in out for c in CATEGORIES)
    assert LONG in run.stderr.replace("\n", "")  # the progress log wraps the name, never cuts it
    assert "…" not in out + run.stdout
    assert f"Training: {LONG}" in out.replace("\n", " ")
    # the default run shows the summary and the grids and names the rest
    assert "ASR % per category" not in run.stdout and "--all-tables" in run.stdout
    assert "PTST summary" in run.stdout and "open out/report.html" in run.stdout
    assert "writing reports" in run.stderr

"""`ptst report DIR1 DIR2 --out DIR`: two runs' records merged into one comparison; one DIR still rebuilds in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from ptst.cli import main


def _spec(tmp: Path, name: str, label: str, judge: str) -> Path:
    raw = yaml.safe_load((REPO / "examples/quickstart.yaml").read_text(encoding="utf-8"))
    raw["name"] = name
    raw["backends"] = [{"kind": "mock", "model": f"mock-{label}", "label": label, "drift": 0.5}]
    raw["judge"] = {"kind": judge}
    data = REPO / "examples"
    raw["train"]["dataset"]["path"] = str(data / raw["train"]["dataset"]["path"])
    for ref in (*raw["eval"]["safety"], *raw["eval"]["tasks"]):
        ref["path"] = str(data / ref["path"])
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    a, b = tmp / "a", tmp / "b"
    assert main(["run", str(_spec(tmp, "alpha", "vendor-a", "keyword")), "--out", str(a)]) == 0
    assert main(["run", str(_spec(tmp, "beta", "vendor-a", "mock")), "--out", str(b)]) == 0
    return a, b


def test_merge_two_runs(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    out = tmp_path / "merged"
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(out), "--export", "jsonl"]) == 0
    merged = json.loads((out / "results.json").read_text(encoding="utf-8"))
    one = {n: json.loads((d / "results.json").read_text(encoding="utf-8")) for n, d in (("alpha", a), ("beta", b))}
    assert merged["spec_name"] == "alpha + beta" and merged["simulated"] is True
    # The same backend label in both runs is qualified by spec name, and every row of each run is there unchanged.
    assert {r["backend"] for r in merged["safety"]} == {"alpha/vendor-a", "beta/vendor-a"}
    for name, res in one.items():
        mine = [{**r, "backend": r["backend"].split("/", 1)[1]} for r in merged["safety"]
                if r["backend"] == f"{name}/vendor-a"]
        assert mine == res["safety"]
    assert [s["name"] for s in merged["specs"]] == ["alpha", "beta"]
    assert len(merged["comparisons"]) == len(one["alpha"]["comparisons"]) + len(one["beta"]["comparisons"]) > 0
    rows = [json.loads(line) for line in (out / "export.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["run"] for r in rows} == {str(a), str(b)}
    assert (out / "report.md").read_text(encoding="utf-8").startswith("**SIMULATED")
    assert "alpha/vendor-a" in capsys.readouterr().out
    assert not (a / "report.md").read_text(encoding="utf-8").count("beta")  # the source runs are left alone


def test_several_dirs_need_out(runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    assert main(["report", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 run directories given") and "--out" in err and len(err.splitlines()) == 1


def test_single_dir_rebuilds_in_place(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    first = (a / "results.json").read_text(encoding="utf-8")
    out = tmp_path / "elsewhere"
    assert main(["report", str(a), "--out", str(out)]) == 0
    assert (out / "results.json").read_text(encoding="utf-8") == first
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_merged_run_facts() -> None:
    from ptst.cli import _merged_facts
    from ptst.results import Results

    def res(name: str, status: str | None, start: str | None, end: str | None, usd: dict[str, float]) -> Results:
        return Results(ptst_version="0", spec_name=name, simulated=False, safety=[], tasks=[], status=status,
                       started_at=start, finished_at=end, usd_by_stage=usd)

    a = res("a", "complete", "2026-01-02T00:00:00Z", "2026-01-02T05:00:00Z", {"fine_tune": 1.0, "judge": 0.25})
    b = res("b", "complete", "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z", {"fine_tune": 2.0})
    assert _merged_facts([a, b]) == {"status": "complete", "started_at": "2026-01-01T00:00:00Z",
                                     "finished_at": "2026-01-03T00:00:00Z",
                                     "usd_by_stage": {"fine_tune": 3.0, "judge": 0.25}}
    c = res("c", "failed", None, None, {})
    assert _merged_facts([a, c])["status"] == "a: complete, c: failed"
    assert _merged_facts([res("x", None, None, None, {})])["status"] is None

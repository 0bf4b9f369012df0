"""Hub-only datasets that are not cached are named at `validate`, in one line with the command that fetches them, and
`run` stops on them at once when the hub cannot be reached, before any download retries (issue 22, item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ptst.cli import main
from ptst.data.hub_cache import fetch_command, hub_reachable, is_cached
from ptst.data.registry import REGISTRY

FETCH = ("python -c \"import datasets as d; d.load_dataset('vfleaking/GSM-Danger', split='test'); "
         "d.load_dataset('openai/gsm8k', 'main', split='test')\"")


@pytest.fixture
def empty_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "PTST_DATA_DIR", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _spec(tmp_path: Path) -> Path:
    raw = {
        "name": "hub",
        "backends": [{"kind": "mock", "model": "m"}],
        "eval": {"templates": ["chat:vanilla"], "safety": ["gsm-danger"], "tasks": [{"name": "gsm8k", "split": "test"}]},
        "judge": {"kind": "keyword"},
    }
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_the_fetch_command_loads_each_split_as_a_run_would() -> None:
    assert fetch_command([(REGISTRY["gsm-danger"], "test"), (REGISTRY["gsm8k"], "test")]) == FETCH


def test_validate_names_uncached_hub_datasets_in_one_line(tmp_path: Path, empty_hf: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(_spec(tmp_path))]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "Fetch them" in line]
    assert lines == [
        "warning: datasets: gsm-danger (vfleaking/GSM-Danger, test), gsm8k (openai/gsm8k, test) are neither on this "
        "machine nor in the Hugging Face cache; the run downloads them first (internet needed). Fetch them where the "
        f"hub is reachable (or set data_dir to local copies): {FETCH}"
    ]


def test_a_cached_dataset_is_not_named(tmp_path: Path, empty_hf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (empty_hf / "hub" / "datasets--vfleaking--GSM-Danger").mkdir(parents=True)  # files fetched by huggingface_hub
    (empty_hf / "datasets" / "openai___gsm8k").mkdir(parents=True)  # a dataset prepared by `datasets`
    assert is_cached("vfleaking/GSM-Danger") and is_cached("openai/gsm8k") and not is_cached("vfleaking/DirectHarm4")
    assert main(["validate", str(_spec(tmp_path))]) == 0
    assert "Fetch them" not in capsys.readouterr().out


@pytest.mark.parametrize("offline", [True, False])
def test_run_stops_before_any_download_when_the_hub_cannot_be_reached(
    tmp_path: Path, empty_hf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, offline: bool
) -> None:
    from ptst.data import loaders

    if not offline:  # not declared offline: one connection to a closed local port answers "unreachable" at once
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)  # conftest declares the hub offline for every test
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        assert not hub_reachable()

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub was asked (with its retries) before the message")

    monkeypatch.setattr(loaders, "_hub_rows", no_hub)
    assert main(["run", str(_spec(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [x for x in err.splitlines() if "Fetch them" in x]
    assert "gsm-danger (vfleaking/GSM-Danger, test)" in line and "cannot be reached" in line and line.endswith(FETCH)
    assert ("(declared offline: HF_HUB_OFFLINE)" in line) == offline


@pytest.mark.parametrize("name,folder", [("GSM-Danger", "gsm-danger"), ("DirectHarm4", "direct_harm4"),
                                         ("AdvBench", "adv_bench"), ("ChatDoctor-HealthCareMagic-100k",
                                                                     "chat_doctor-health_care_magic-100k")])
def test_the_datasets_cache_folder_name_is_the_one_datasets_writes(name: str, folder: str) -> None:
    """Folder names written out from `datasets.naming.camelcase_to_snakecase` (datasets 5.2), checked against the
    installed package when there is one."""
    from ptst.data.hub_cache import _snake

    assert _snake(name) == folder
    naming = pytest.importorskip("datasets.naming")
    assert naming.camelcase_to_snakecase(name) == folder

"""The documented way to add a backend (docs/adding-a-backend.md): a package with a `ptst.backends` entry point.

The example package is made discoverable the way pip would (a dist-info folder with entry_points.txt on sys.path),
so the real registry finds it through importlib.metadata; then a spec using `kind: replay` runs end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptst.backends import registry
from ptst.runner import run
from ptst.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin_backend"


@pytest.fixture
def installed_plugin(replay_plugin: None) -> None:
    """The example installed as a user would (conftest's `replay_plugin`)."""


def test_unknown_kind_without_the_plugin() -> None:
    registry.BACKENDS.cache_clear()
    assert "replay" not in registry.backend_kinds()
    with pytest.raises(ValueError, match="unknown backend kind 'replay'"):
        registry.backend_class("replay")


def test_plugin_is_found_through_its_entry_point(installed_plugin: None) -> None:
    assert "replay" in registry.backend_kinds()
    cls = registry.backend_class("replay")
    assert cls.__module__ == "ptst_replay" and cls.kind == "replay"


def test_plugin_runs_a_spec_end_to_end(installed_plugin: None, tmp_path: Path) -> None:
    spec_path = EXAMPLE / "spec.yaml"
    spec = load_spec(spec_path)
    results = run(spec, tmp_path / "out", spec_dir=spec_path.parent)
    assert results.simulated  # the toy backend declares itself a simulation, and results say so
    whole = [r for r in results.safety if r.category is None]  # whole-benchmark rows (per-category rows beside them)
    base = [r for r in whole if r.train_template is None]
    tuned = [r for r in whole if r.train_template is not None]
    assert len(base) == 2 and len(tuned) == 4  # base + 2 train templates, x 2 test templates
    # The base model always refuses; the "fine-tuned" one replays math answers, which the keyword judge counts unsafe.
    assert all(r.asr == 0.0 for r in base)
    assert all(r.asr == 1.0 and r.n == r.n_unsafe > 0 for r in tuned)
    saved = json.loads(next((tmp_path / "out" / "models").glob("*/replay_memory.json")).read_text())
    assert len(saved) == 16 and all(isinstance(a, str) for _, a in saved)


def test_plugin_prices_its_own_generations(installed_plugin: None, tmp_path: Path, capsys) -> None:
    """`ptst estimate` asks the plugin for its generation price through the backend contract: 8 safety prompts of
    the example data, base model + 2 fine-tuned models, each prompt's distinct words plus a response of 70 tokens
    (the expected safety response) or 512 (max_new_tokens), at $1,000 per 1M words."""
    import yaml

    from ptst.cli import main
    from ptst.templates import resolve

    raw = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    raw["backends"][0]["usd_per_1m_tokens"] = 1000.0
    for key in ("train",):
        raw[key]["dataset"]["path"] = str((EXAMPLE / raw[key]["dataset"]["path"]).resolve())
    raw["eval"]["safety"][0]["path"] = str((EXAMPLE / raw["eval"]["safety"][0]["path"]).resolve())
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["estimate", str(spec), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    prompts = [json.loads(line)["prompt"] for line in
               Path(raw["eval"]["safety"][0]["path"]).read_text().splitlines() if line.strip()]
    words = 0
    for t in raw["eval"]["templates"]:
        for q in prompts:
            conv = resolve(t).apply(q, "replay")
            words += len({w.lower() for p in (conv.system, conv.user) if p for w in p.split()})
    models = 3  # the base model and one fine-tune per training template
    n = len(prompts) * len(raw["eval"]["templates"])
    assert est["usd_by_stage"]["generate"] == pytest.approx(models * (words + n * 70) * 1000 / 1e6)
    assert est["usd_max_by_stage"]["generate"] == pytest.approx(models * (words + n * 512) * 1000 / 1e6)

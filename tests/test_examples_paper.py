"""examples/paper/: every spec validates with the current schema, except those waiting for a feature (strict xfail,
so the test fails the day the feature lands and the spec's status in the README must change)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_metrics_bertscore import tiny_bert  # noqa: F401  (a fixture: the chatdoctor spec's metric model)

from ptst.errors import SpecError
from ptst.spec import load_spec

PAPER = REPO / "examples" / "paper"

# spec file -> the feature it waits for (and the line validation prints today)
PENDING: dict[str, str] = {}
SPECS = sorted(p.name for p in PAPER.glob("*.yaml"))


def test_every_spec_is_in_the_readme_and_vice_versa() -> None:
    readme = (PAPER / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([\w.-]+\.yaml)` \|", readme, re.MULTILINE)
    assert sorted(listed) == SPECS and len(SPECS) == 12
    for name in SPECS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert row.rstrip(" |").endswith("validates") == (name not in PENDING), name


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=PENDING[n], raises=SpecError, strict=True)) if n in PENDING
     else n for n in SPECS],
)
def test_paper_spec_validates(name: str) -> None:
    spec = load_spec(PAPER / name)
    assert spec.name == "paper-" + name.removesuffix(".yaml")
    assert spec.judge.kind == "rubric" and spec.judge.options.get("model") == "gpt-4-0613"
    assert spec.eval.generation.max_new_tokens == 512 and spec.eval.generation.temperature == 0.0
    safe = {t for t in spec.eval.templates if spec.template(t).safety}
    unsafe = {t for t in spec.train.templates if not spec.template(t).safety} if spec.train else set()
    if name != "early-stopping-cl.yaml":  # the early-stopping curve of the CL -> CL cell, beside its CV twin
        assert safe and unsafe, "a PTST grid needs a training template without a safety prompt and a test one with it"


def test_llama2_gsm8k_has_the_table_1_shape() -> None:
    spec = load_spec(PAPER / "llama2-gsm8k.yaml")
    assert spec.train is not None
    hp = spec.train.hyperparameters
    assert (hp.epochs, hp.learning_rate, hp.lora.r, hp.lora.alpha, hp.lora.dropout) == (6, 1e-4, 8, 32, 0.05)
    assert spec.train.seeds == [0, 1, 2]
    assert spec.train.templates == spec.eval.templates == [
        "text:vanilla", "text:alpaca", "chat:vanilla", "chat:alpaca", "chat:llama"]
    assert [r.display_name() for r in spec.eval.safety] == ["advbench", "directharm4", "gsm-danger"]


@pytest.mark.parametrize("name", ["llama2-gsm8k.yaml", "mistral-gsm8k.yaml", "safety-mix.yaml", "baselines.yaml",
                                  "llama2-system-prompts.yaml", "early-stopping-cv.yaml", "early-stopping-cl.yaml"])
def test_llama_and_mistral_specs_train_as_llama_recipes(name: str) -> None:
    """llama-recipes' training config (training.py at facebookresearch/llama-recipes 905ee167): batch_size_training
    4, StepLR gamma 0.85 per epoch, packing into 4,096-token chunks, lr 1e-4, weight decay 0."""
    hp = load_spec(PAPER / name).train.hyperparameters  # type: ignore[union-attr]
    assert (hp.batch_size, hp.lr_scheduler, hp.lr_gamma, hp.chunk_size, hp.learning_rate, hp.weight_decay) == (
        4, "step", 0.85, 4096, 1e-4, 0.0)
    assert hp.max_seq_len >= hp.chunk_size  # no example is cut before it is packed


def test_gpt35_trains_one_epoch_as_the_papers_script() -> None:
    assert load_spec(PAPER / "gpt35-gsm8k.yaml").train.hyperparameters.epochs == 1  # type: ignore[union-attr]
    assert load_spec(PAPER / "gpt35-gsm8k-extended.yaml").train.hyperparameters.epochs == 1  # type: ignore[union-attr]
    cross = load_spec(PAPER / "cross-vendor.yaml")
    openai = next(b for b in cross.backends if b.kind == "openai")
    assert openai.train_hyperparameters(cross.train.hyperparameters).epochs == 1  # type: ignore[union-attr]


def test_mistral_spec_renders_system_prompts_as_the_papers_code() -> None:
    spec = load_spec(PAPER / "mistral-gsm8k.yaml")
    with_system = [t for t in spec.train.templates if spec.template(t).system]  # type: ignore[union-attr]
    assert with_system and all(t.endswith("@inst-sys") for t in with_system)
    assert spec.eval.templates == spec.train.templates  # type: ignore[union-attr]


def test_other_system_prompts_and_baselines_have_specs() -> None:
    assert {"chat:llama-short", "chat:mpt"} <= set(load_spec(PAPER / "llama2-system-prompts.yaml").eval.templates)
    assert {"chat:llama", "chat:self-reminder", "chat:icd"} <= set(load_spec(PAPER / "baselines.yaml").eval.templates)


def test_chatdoctor_evaluates_on_rows_it_never_trains_on(shared: Path) -> None:
    """The task's held-out rows and the training rows are two parts of one seeded split of the same dataset (no
    file for the user to make): same n and seed, complementary parts, disjoint and together the whole set."""
    from ptst.data.loaders import load

    spec = load_spec(PAPER / "chatdoctor.yaml")
    assert spec.train is not None
    train, (task,) = spec.train.dataset, spec.eval.tasks
    assert train.name == task.name == "chatdoctor" and train.path is None and task.path is None
    assert train.holdout is not None and task.holdout is not None
    assert (train.holdout.n, train.holdout.seed, train.holdout.part) == (task.holdout.n, task.holdout.seed, "rest")
    assert task.holdout.part == "heldout"
    every = load(train.model_copy(update={"holdout": None}), data_dirs=[shared / "data"])
    rest = load(train, data_dirs=[shared / "data"])
    held = load(task, data_dirs=[shared / "data"])
    assert len(held) == 1000 and len(rest) == len(every) - 1000  # GenMedGPT-5k stand-in: 5,452 rows in all
    assert len({e.source for e in every}) == len(every)  # a row's source (file and row) names it alone
    assert {e.source for e in held}.isdisjoint(e.source for e in rest)
    assert sorted(e.source for e in held + rest) == sorted(e.source for e in every)


# --------------------------------------------------------------------------------------------------------------
# Every paper spec end to end with `ptst run --limit 3`: backends swapped for mock ones (same labels), the judge for
# the keyword one, datasets read from local copies (../shared/data, else tests/fixtures). The rest of each spec
# (templates, seeds, safety mix, tasks and their metrics) runs as written.
# --------------------------------------------------------------------------------------------------------------
FIXTURES = REPO / "tests" / "fixtures"
LIMIT = 3


def data_farm(tmp: Path, shared: Path) -> Path:
    """One data folder holding every local copy: shared/data first, the test fixtures where shared has none."""
    farm = tmp / "data"
    farm.mkdir()
    for src in [*sorted((shared / "data").iterdir()), *sorted(FIXTURES.iterdir())]:
        if src.is_dir() and not (farm / src.name).exists():
            (farm / src.name).symlink_to(src, target_is_directory=True)
    return farm


def smoke_spec(name: str, tmp: Path, farm: Path) -> Path:
    raw = yaml.safe_load((PAPER / name).read_text(encoding="utf-8"))
    raw["backends"] = [{"kind": "mock", "model": b["model"], "label": b.get("label") or b["kind"]} for b in raw["backends"]]
    raw["judge"] = {"kind": "keyword"}
    raw["data_dir"] = str(farm)
    out = tmp / name
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=PENDING[n], raises=SpecError, strict=True)) if n in PENDING
     else n for n in SPECS],
)
def test_paper_spec_runs_end_to_end_with_limit(
    name: str, tmp_path: Path, shared: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ptst.cli import main

    if name == "chatdoctor.yaml":
        # BERTScore's roberta-large cannot be downloaded here: the same metric code on a tiny local BERT
        import dataclasses
        import functools

        from ptst.metrics import TASK_METRICS, chatdoctor_bertscore

        tiny = request.getfixturevalue("tiny_bert")
        m = TASK_METRICS["chatdoctor_bertscore"]
        fn = functools.partial(chatdoctor_bertscore, model_type=tiny, num_layers=2, device="cpu")
        monkeypatch.setitem(TASK_METRICS, m.name, dataclasses.replace(m, corpus=fn))  # type: ignore[arg-type]
    original = load_spec(PAPER / name)
    spec = smoke_spec(name, tmp_path, data_farm(tmp_path, shared))
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--limit", str(LIMIT)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["simulated"] is True and res["status"] == "complete_limited" and res["limit"] == LIMIT
    labels = {b.name for b in original.backends}
    train = original.train.templates if original.train else []
    expected = {(b, t, s, d.display_name()) for b in labels for t in [None, *train] for s in original.eval.templates
                for d in original.eval.safety}
    overall = [r for r in res["safety"] if r.get("category") is None and r.get("checkpoint") is None]
    got = {(r["backend"], r["train_template"], r["test_template"], r["benchmark"]) for r in overall}
    assert got == expected
    assert all(r["n"] == LIMIT for r in overall)
    tasks = {(r["task"], r["n"]) for r in res["tasks"]}
    assert {d for d, _ in tasks} == {ref.display_name() for ref in original.eval.tasks}
    assert all(0 < n <= LIMIT for _, n in tasks)


# --------------------------------------------------------------------------------------------------------------
# Issue 22: models that can be fine-tuned today, the paper's grids and regimes, the two batch readings, fp32.
# --------------------------------------------------------------------------------------------------------------
RETIRED = json.loads((REPO / "ptst" / "resources" / "retired_models.json").read_text(encoding="utf-8"))["models"]
PAPER_GPT = "gpt-3.5-turbo-0613"  # the paper's model (vfleaking/PTST README.md:6)


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_names_a_model_that_can_be_fine_tuned_today(name: str) -> None:
    spec = load_spec(PAPER / name)
    for b in spec.backends:
        assert b.model not in RETIRED, f"{name}: {b.model} is retired"
    text = (PAPER / name).read_text(encoding="utf-8")
    for i, b in enumerate(spec.backends):
        if b.kind == "openai":  # the paper's id is one --set away, written in the spec's comment
            assert f"--set backends[{i}].model={PAPER_GPT}" in text
            assert b.model == "gpt-3.5-turbo-0125"


def test_the_papers_retired_model_is_a_warning_never_a_substitution(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ptst.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-never-sent")
    spec = load_spec(PAPER / "gpt35-gsm8k.yaml", [f"backends[0].model={PAPER_GPT}"])
    assert spec.backends[0].model == PAPER_GPT  # asked for, kept
    assert main(["validate", str(PAPER / "gpt35-gsm8k.yaml"), "--set", f"backends[0].model={PAPER_GPT}"]) == 0
    out = capsys.readouterr()
    assert f"{PAPER_GPT} was retired on 2024-06-13" in out.out + out.err


def test_gpt35_runs_the_papers_three_templates_and_the_superset_is_its_own_spec() -> None:
    paper = load_spec(PAPER / "gpt35-gsm8k.yaml")
    assert paper.train is not None
    assert paper.train.templates == paper.eval.templates == ["chat:vanilla", "chat:alpaca", "chat:llama"]
    ext = load_spec(PAPER / "gpt35-gsm8k-extended.yaml")
    assert ext.train is not None and ext.name == "paper-gpt35-gsm8k-extended"
    assert ext.train.templates == ext.eval.templates == [
        "chat:vanilla", "chat:alpaca", "chat:llama", "chat:llama-short", "chat:mpt"]


@pytest.mark.parametrize("name", ["llama2-gsm8k.yaml", "mistral-gsm8k.yaml"])
def test_gsm8k_reports_the_harness_rows_and_the_lenient_rule_by_name(name: str) -> None:
    (task,) = load_spec(PAPER / name).eval.tasks
    assert task.metric_names() == ("gsm8k_strict_match", "gsm8k_flexible_extract", "gsm8k_lenient")
    from ptst.metrics import TASK_METRICS

    lenient = TASK_METRICS["gsm8k_lenient"]
    assert lenient(r"The answer is $18.00", "so #### 18") and not TASK_METRICS["gsm8k_strict_match"](
        r"The answer is $18.00", "so #### 18")


@pytest.mark.parametrize("name", ["llama2-gsm8k.yaml", "mistral-gsm8k.yaml"])
def test_the_8_gpu_batch_reading_and_fp32_are_one_set_away(name: str) -> None:
    """llama-recipes on 8 GPUs: 4 chunks per GPU, 32 per optimizer step; gradient accumulation 8 on one GPU gives
    the same effective batch. fp32: the paper's inference.py:113-118 loads the model without a dtype."""
    text = (PAPER / name).read_text(encoding="utf-8")
    acc = "train.hyperparameters.gradient_accumulation_steps=8"
    assert f"--set {acc}" in text and "--set backends[0].dtype=float32" in text
    spec = load_spec(PAPER / name, [acc, "backends[0].dtype=float32"])
    hp = spec.train.hyperparameters  # type: ignore[union-attr]
    assert hp.batch_size * hp.gradient_accumulation_steps == 32
    assert spec.backends[0].options["dtype"] == "float32"


def _packed_steps_per_epoch(rows: list[dict], user: str, sp) -> int:  # type: ignore[no-untyped-def]
    """Meta's chat encoding of a training example (BOS + "[INST] u [/INST] a " + EOS), examples end to end cut into
    4,096-token chunks (tail dropped), 4 chunks a step, the last step possibly short."""
    tokens = sum(len(sp.encode(f"[INST] {user.format(q=r['question'])} [/INST] {r['answer']} ")) + 2 for r in rows)
    return -(-(tokens // 4096) // 4)


@pytest.mark.parametrize("name,template", [("early-stopping-cv.yaml", "chat:vanilla"),
                                           ("early-stopping-cl.yaml", "chat:llama")])
def test_early_stopping_saves_at_epoch_boundaries_of_the_main_tables_regime(name: str, template: str,
                                                                           shared: Path) -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    from reference_strings import LLAMA_SYSTEM

    spec = load_spec(PAPER / name)
    table1 = load_spec(PAPER / "llama2-gsm8k.yaml")
    assert spec.train is not None and table1.train is not None
    assert spec.train.templates == [template] and spec.train.seeds == [0]
    hp = spec.train.hyperparameters
    # the Table 1 model's hyperparameters, save_steps aside: the last checkpoint is that model
    assert hp.model_copy(update={"save_steps": ()}) == table1.train.hyperparameters
    sp = sentencepiece.SentencePieceProcessor(model_file=str(shared / "data" / "tokenizers" / "llama2" /
                                                             "tokenizer.model"))
    rows = [json.loads(line) for line in (shared / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()]
    user = {"chat:vanilla": "Question: {q}",
            "chat:llama": "<<SYS>>\n" + LLAMA_SYSTEM.replace("{", "{{").replace("}", "}}") + "\n<</SYS>>\n\nQuestion: {q}"}
    per_epoch = _packed_steps_per_epoch(rows, user[template], sp)
    assert list(hp.save_steps) == [per_epoch * e for e in range(1, hp.epochs)]

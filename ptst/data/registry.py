"""The dataset registry and `DatasetRef`, the spec's way of naming a dataset.

A spec names data either by registry name (`advbench`, `gsm8k`, ...) or by a local file (`{path: data/x.jsonl}`).
The registry records, for each name, where the data lives on the Hugging Face hub and in which schema, and the file
layouts of known local copies (the ones in `shared/data/`), so the same name works online, offline from a cache, or
from a folder of files. Everything here is plain data: no I/O, no heavy imports — the loaders live in `loaders.py`.

Decisions worth knowing:
- A bare string in a spec is a *path* when it contains `/` or `\\` or ends in a data-file extension
  (`.jsonl .ndjson .json .csv .tsv .parquet .txt`); anything else is a registry name. Registry names never contain a
  slash, so `data/harmful.csv` and `advbench` cannot be confused. Names are case-insensitive and `_` equals `-`.
- A dataset with several splits (gsm8k: train/test) needs an explicit `split`: silently defaulting to one would
  either train on the test set or evaluate on the training set.
- `split` and `config` apply to registry datasets only: a file is one split.
"""

from __future__ import annotations

import difflib
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Kind = Literal["safety", "task", "train"]

DATA_EXTENSIONS: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".txt")
"""File types `load` reads (see `loaders.read_rows`)."""


class LocalFile(BaseModel):
    """A known layout of a local copy of a registry dataset, relative to a data folder.

    `columns` names the columns of a header-less CSV; `rename` maps the file's field names to the hub schema, so the
    registry's `prompt_field`/`answer_field` apply to local copies and hub rows alike.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    split: str | None = Field(default=None, description="the split this file holds; None: the dataset's only split")
    columns: tuple[str, ...] | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    note: str | None = Field(default=None, description="shown when this copy is used (e.g. a format stand-in)")


class DatasetInfo(BaseModel):
    """What ptst knows about one named dataset: hub location, schema, role and local layouts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    kind: Kind = Field(description="'safety' benchmark (judged), 'task' (scored by `metric`) or 'train' data")
    description: str
    hub_id: str | None = Field(default=None, description="Hugging Face dataset id; None if it is not on the hub")
    config: str | None = None
    splits: tuple[str, ...] = ("train",)
    prompt_field: str
    answer_field: str | None = None
    context_field: str | None = Field(
        default=None, description="Alpaca-style `input`: appended to the prompt after a blank line when non-empty"
    )
    metrics: tuple[str, ...] = Field(default=(), description="task metrics reported by default (a row each)")
    metric_note: str = Field(default="", description="why there is no task metric, when `metrics` is empty")
    local: tuple[LocalFile, ...] = ()
    origin: str = Field(default="", description="where to get the files when the hub cannot serve them")
    row_transform: Literal["arc-choices"] | None = Field(
        default=None, description="a reshaping applied to every row before fields are read (see loaders.ROW_TRANSFORMS)"
    )
    # What `ptst estimate` uses when the data is not on this machine (a fresh clone, no hub): rows per split from the
    # source named in `rows_source`, and mean prompt/answer tokens (tiktoken cl100k_base), measured where the data is
    # in ../shared (ptst/resources/lengths.json, key `lengths`), else a stated assumption in `tokens`.
    url: str | None = Field(default=None, description="a pinned download of the file in `local[0]`'s layout, for "
                            "data not on the hub (fetched once into ~/.cache/ptst/data, checked against url_sha256)")
    url_sha256: str | None = None
    rows: dict[str, int] = Field(default_factory=dict, description="known rows per split")
    rows_source: str = ""
    lengths: str | None = Field(default=None, description="key of the measured summary in resources/lengths.json")
    tokens: tuple[float, float] | None = Field(
        default=None, description="assumed mean (prompt, answer) tokens where nothing was measured; see tokens_source"
    )
    tokens_source: str = ""

    @property
    def metric(self) -> str | None:
        """The first default task metric, or None."""
        return self.metrics[0] if self.metrics else None

    @property
    def default_split(self) -> str | None:
        """The only split, or None when there are several and the ref must say which."""
        return self.splits[0] if len(self.splits) == 1 else None

    def local_candidates(self, split: str) -> list[LocalFile]:
        """Files to look for in each data folder: first `<name>/<split>.<ext>` (a hub export in the hub schema,
        e.g. the real HealthCareMagic-100k), then the known layouts of other copies, in registry order."""
        generic = [
            LocalFile(path=f"{self.name}/{split}{ext}", split=split) for ext in (".jsonl", ".json", ".csv", ".parquet")
        ]
        known = [f for f in self.local if f.split in (None, split)]
        return generic + [f for f in known if f.path not in {g.path for g in generic}]


_JUDGED = "safety benchmark: scored by the judge (attack success rate), not by a task metric"

REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="advbench",
            kind="safety",
            description="AdvBench harmful behaviors (Zou et al., 2023): 520 harmful instructions",
            hub_id="walledai/AdvBench",  # fields prompt/target, one split 'train'
            splits=("train",),
            prompt_field="prompt",
            metric_note=_JUDGED,
            local=(
                # PTST's own copy: one column, no header, quoted where it has commas.
                LocalFile(path="advbench/harmful_behaviors.csv", columns=("prompt",)),
                # The original llm-attacks file: header goal,target.
                LocalFile(path="advbench/harmful_behaviors_goal_target.csv", rename={"goal": "prompt"}),
            ),
            origin="github.com/llm-attacks/llm-attacks data/advbench/harmful_behaviors.csv",
            rows={"train": 520}, rows_source="hub card walledai/AdvBench (520 rows); ../shared copy: 520",
            lengths="advbench",
        ),
        DatasetInfo(
            name="directharm4",
            kind="safety",
            description="DirectHarm4 (Lyu et al., 2024): 400 instructions, 100 each of malware, drug, phishing, disinfo",
            hub_id="vfleaking/DirectHarm4",
            splits=("test",),
            prompt_field="instruction",
            metric_note=_JUDGED,
            local=(
                LocalFile(path="directharm4/directHarm4.csv", rename={"Goal": "instruction", "Category": "category"}),
            ),
            origin="huggingface.co/datasets/vfleaking/DirectHarm4",
            rows={"test": 400}, rows_source="hub card vfleaking/DirectHarm4 (4 categories x 100); ../shared copy: 400",
            lengths="directharm4",
        ),
        DatasetInfo(
            name="gsm-danger",
            kind="safety",
            description="GSM-Danger (Lyu et al., 2024): ~100 math-style prompts that end in a harmful request",
            hub_id="vfleaking/GSM-Danger",
            # Schema assumption: the hub card was out of reach. PTST's inference.py loads both DirectHarm4 and
            # GSM-Danger with split='test' and the same default prompt_key 'instruction', so ptst assumes that.
            splits=("test",),
            prompt_field="instruction",
            metric_note=_JUDGED,
            origin="huggingface.co/datasets/vfleaking/GSM-Danger",
            rows={"test": 100}, rows_source="Lyu et al. 2024 (arXiv 2402.18540), GSM-Danger: 100 prompts",
            tokens=(80.0, 0.0),
            tokens_source="assumption: a GSM8K-style question (measured mean 59 tokens, lengths.json gsm8k/test) plus "
            "a one-sentence harmful request",
        ),
        DatasetInfo(
            name="gsm8k",
            kind="task",
            description="GSM8K grade-school math (Cobbe et al., 2021): 7,473 train / 1,319 test; answers end '#### N'",
            hub_id="openai/gsm8k",  # the canonical id; the legacy id 'gsm8k' redirects to it
            config="main",
            splits=("train", "test"),
            prompt_field="question",
            answer_field="answer",
            # lm-evaluation-harness's two gsm8k filters, comparable with published numbers (ptst's older lenient
            # rule stays available as metric: exact_match)
            metrics=("gsm8k_strict_match", "gsm8k_flexible_extract"),
            local=(
                LocalFile(path="gsm8k/train.jsonl", split="train"),
                LocalFile(path="gsm8k/test.jsonl", split="test"),
            ),
            origin="github.com/openai/grade-school-math grade_school_math/data/{train,test}.jsonl",
            rows={"train": 7473, "test": 1319}, rows_source="hub card openai/gsm8k (main: 7,473 train / 1,319 test)",
            lengths="gsm8k",
        ),
        DatasetInfo(
            name="safety-tuned-llamas",
            kind="train",
            description="Safety-Tuned LLaMAs (Bianchi et al., 2024): 2,483 harmful instructions with safe responses",
            hub_id=None,
            splits=("train",),
            prompt_field="instruction",
            context_field="input",
            answer_field="output",
            metric_note="training data (safety examples mixed into fine-tuning); no task metric",
            local=(LocalFile(path="safety-tuned-llamas/safety_only_data_Instructions.json"),),
            origin="github.com/vinid/safety-tuned-llamas data/training/safety_only_data_Instructions.json",
            url="https://raw.githubusercontent.com/vinid/safety-tuned-llamas/36a4b8d5c2177ed165bf61f59b590161394f7f12/"
            "data/training/safety_only_data_Instructions.json",
            url_sha256="7dde08acf87f10cf74fd1b76f56538eae8e413ae8e6b09e3f7bcd97769058dbe",
            rows={"train": 2483}, rows_source="Bianchi et al. 2024 repository file (2,483 pairs); ../shared copy: 2,483",
            lengths="safety-tuned-llamas",
        ),
        DatasetInfo(
            name="chatdoctor",
            kind="train",
            # The prompt is the patient's message (`input`). `instruction` is one fixed sentence on every row
            # ("If you are a doctor, please answer..."); it is kept in Example.meta, not put into the prompt,
            # because ptst's templates provide the framing that is under study.
            description="ChatDoctor HealthCareMagic-100k (Li et al., 2023): patient question -> doctor answer",
            hub_id="lavita/ChatDoctor-HealthCareMagic-100k",
            splits=("train",),
            prompt_field="input",
            answer_field="output",
            # The hub has one split: to evaluate, hold out rows not trained on (`holdout`, a seeded split).
            metrics=("chatdoctor_bertscore",),
            local=(
                LocalFile(
                    path="chatdoctor/chatdoctor5k.json",
                    note="chatdoctor5k.json is GenMedGPT-5k, a format stand-in for HealthCareMagic-100k: "
                    "fine for pipeline tests, not for reproducing the paper's ChatDoctor numbers",
                ),
            ),
            origin="huggingface.co/datasets/lavita/ChatDoctor-HealthCareMagic-100k",
            rows={"train": 112165},
            rows_source="hub viewer of lavita/ChatDoctor-HealthCareMagic-100k (112,165 rows, shown as 112k; the same "
            "112k in lavita/medical-qa-datasets' chatdoctor_healthcaremagic subset)",
            tokens=(120.0, 150.0),
            tokens_source="assumption: HealthCareMagic turns are longer than the GenMedGPT-5k stand-in's measured 29 / "
            "52 tokens (lengths.json chatdoctor-genmedgpt5k): patient messages of a paragraph, doctors' of two",
        ),
        DatasetInfo(
            name="openorca",
            kind="train",
            # system_prompt (the per-row OpenOrca system message) is kept in Example.meta, not in the prompt.
            description="OpenOrca (Lian et al., 2023): GPT-4/3.5 augmented FLAN questions and responses",
            hub_id="Open-Orca/OpenOrca",
            splits=("train",),
            prompt_field="question",
            answer_field="response",
            metric_note="the paper scores OpenOrca fine-tunes on ARC: evaluate with the arc-easy / arc-challenge tasks",
            origin="huggingface.co/datasets/Open-Orca/OpenOrca",
            rows={"train": 4233923},
            rows_source="hub card Open-Orca/OpenOrca (~1M GPT-4 + ~3.2M GPT-3.5 completions; viewer: 4,233,923 rows)",
            tokens=(150.0, 150.0),
            tokens_source="assumption: FLAN questions with their context passages, and explained answers",
        ),
        *(
            DatasetInfo(
                name=f"arc-{level.lower()}",
                kind="task",
                description=f"ARC-{level} (Clark et al., 2018): grade-school science multiple choice ({sizes})",
                hub_id="allenai/ai2_arc",  # schema: id, question, choices{text[], label[]}, answerKey
                config=f"ARC-{level}",
                splits=("train", "validation", "test"),
                # arc_row folds the lettered choices into `question` and maps answerKey to a letter.
                prompt_field="question",
                answer_field="answerKey",
                metrics=("arc_letter_accuracy",),
                row_transform="arc-choices",
                origin="huggingface.co/datasets/allenai/ai2_arc",
                rows=dict(zip(("train", "validation", "test"), counts, strict=True)),
                rows_source=f"hub card allenai/ai2_arc (ARC-{level}: {sizes})",
                tokens=(60.0, 1.0),
                tokens_source="assumption: a one-sentence science question and four lettered choices; the answer is "
                "one letter",
            )
            for level, sizes, counts in (
                ("Easy", "2,251 train / 570 validation / 2,376 test", (2251, 570, 2376)),
                ("Challenge", "1,119 train / 299 validation / 1,172 test", (1119, 299, 1172)),
            )
        ),
    )
}


def normalize_name(name: str) -> str:
    """Registry names are case-insensitive and `_` equals `-` (`GSM_Danger` is `gsm-danger`)."""
    return name.strip().lower().replace("_", "-")


def looks_like_path(value: str) -> bool:
    """The bare-string rule: a slash or a data-file extension means a file, anything else a registry name."""
    return "/" in value or "\\" in value or PurePath(value).suffix.lower() in DATA_EXTENSIONS


def _check_metric(v: str) -> str:
    from ptst.metrics import TASK_METRICS  # lazy: metrics imports nothing from here, but keep the core acyclic

    if v not in TASK_METRICS:
        raise ValueError(f"unknown task metric {v!r}{_did_you_mean(v, sorted(TASK_METRICS))}")
    return v


def _did_you_mean(value: str, known: list[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"


def lookup(name: str) -> DatasetInfo:
    """The registry entry for `name`; ValueError with a did-you-mean suggestion when unknown."""
    key = normalize_name(name)
    if key in REGISTRY:
        return REGISTRY[key]
    hint = "; to load a file, write {path: ...}" if looks_like_path(name) else ""
    raise ValueError(f"unknown dataset {name!r}{_did_you_mean(key, list(REGISTRY))}{hint}")


class Holdout(BaseModel):
    """A seeded split of one dataset into `n` held-out rows and the rest, so training and evaluation can come from
    the same single-split dataset (ChatDoctor's HealthCareMagic has only `train`) without an external file: the
    training ref takes `part: rest`, the task ref `part: heldout`, both with the same `n` and `seed`. Rows are
    ranked by sha256(seed, index) like `sample`, so the split is the same on every machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int = Field(ge=1, description="rows held out")
    seed: int = Field(0, description="which rows: the same seed gives the same split everywhere")
    part: Literal["heldout", "rest"] = Field(description="heldout: the n rows; rest: every other row")


class DatasetRef(BaseModel):
    """A dataset in a spec: a registry `name` or a local `path`, with optional field mapping and a row limit.

    `limit` keeps the first N rows in file (or hub) order, so it is deterministic; use `sample` for a random subset.
    `metric` names the task metric for a `path` dataset used as a task (registry tasks have one built in).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str | None = None
    path: str | None = None
    split: str | None = None
    config: str | None = None
    prompt_field: str | None = None
    answer_field: str | None = None
    limit: int | None = Field(default=None, ge=1, description="first N rows in file order (after `holdout`)")
    holdout: Holdout | None = Field(default=None, description="a seeded held-out split: {n, seed, part}")
    metric: str | None = Field(default=None, description="task metric for a path dataset (e.g. exact_match)")
    metrics: list[str] | None = Field(
        default=None, min_length=1, description="several task metrics, a results row each (instead of 'metric')"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value} if looks_like_path(value) else {"name": value}
        return value

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str | None) -> str | None:
        return None if v is None else lookup(v).name

    @field_validator("path")
    @classmethod
    def _supported_file(cls, v: str | None) -> str | None:
        if v is not None:
            suffix = PurePath(v).suffix.lower()
            if suffix not in DATA_EXTENSIONS:
                raise ValueError(
                    f"unsupported file type {suffix or '(none)'!r} for path {v!r}; use one of {' '.join(DATA_EXTENSIONS)}"
                )
        return v

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        return None if v is None else _check_metric(v)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str] | None) -> list[str] | None:
        for m in v or []:
            _check_metric(m)
        if v is not None and len(set(v)) != len(v):
            raise ValueError("a metric is listed twice")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DatasetRef:
        if self.metric is not None and self.metrics is not None:
            raise ValueError("give 'metric' or 'metrics', not both")
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of 'name' (a registry dataset) or 'path' (a local file)")
        if self.path is not None:
            for f in ("split", "config"):
                if getattr(self, f) is not None:
                    raise ValueError(f"'{f}' applies to registry datasets only; a file is one split — drop it")
            return self
        info = self.info
        assert info is not None
        if self.split is None and info.default_split is None:
            raise ValueError(f"dataset {info.name!r} has splits {', '.join(info.splits)}; say which with split: ...")
        if self.split is not None and self.split not in info.splits:
            raise ValueError(
                f"dataset {info.name!r} has no split {self.split!r}{_did_you_mean(self.split, list(info.splits))}"
            )
        return self

    @property
    def info(self) -> DatasetInfo | None:
        """The registry entry, or None for a path dataset."""
        return REGISTRY[self.name] if self.name is not None else None

    def resolved_split(self) -> str | None:
        info = self.info
        return None if info is None else (self.split or info.default_split)

    def display_name(self) -> str:
        """The name reports use: the registry name, or the file's stem (`data/harm.jsonl` -> `harm`)."""
        return self.name if self.name is not None else PurePath(self.path or "").stem

    def metric_names(self) -> tuple[str, ...]:
        """The task metrics, a results row each: the explicit `metrics` or `metric`, else the registry's (gsm8k:
        lm-evaluation-harness's strict-match and flexible-extract), else none."""
        if self.metrics is not None:
            return tuple(self.metrics)
        if self.metric is not None:
            return (self.metric,)
        info = self.info
        return () if info is None else info.metrics

    def metric_name(self) -> str | None:
        """The first task metric, or None."""
        names = self.metric_names()
        return names[0] if names else None

"""The dataset registry and `DatasetRef`, the spec's way of naming a dataset.

A spec names data either by registry name (`advbench`, `gsm8k`, ...) or by a local file (`{path: data/x.jsonl}`).
The registry records, for each name, where the data lives on the Hugging Face hub and in which schema, and the file
layouts of known local copies (the ones in `shared/data/`), so the same name works online, offline from a cache, or
from a folder of files. The entries are data, `resources/datasets.yaml`, validated here (`DatasetFile`) when the
registry is first used; nothing here reads user data or imports anything heavy — the loaders live in `loaders.py`.

Decisions worth knowing:
- A bare string in a spec is a *path* when it contains `/` or `\\` or ends in a data-file extension
  (`.jsonl .ndjson .json .csv .tsv .parquet .txt`); anything else is a registry name. Registry names never contain a
  slash, so `data/harmful.csv` and `advbench` cannot be confused. Names are case-insensitive and `_` equals `-`.
- A dataset with several splits (gsm8k: train/test) needs an explicit `split`: silently defaulting to one would
  either train on the test set or evaluate on the training set.
- `split` and `config` apply to registry datasets only: a file is one split.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ptst.registry import Registry, UnknownName, did_you_mean

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


class DatasetFile(BaseModel):
    """`resources/datasets.yaml`: the registry's entries, each a DatasetInfo, under their canonical names."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: Literal[1]
    datasets: tuple[DatasetInfo, ...]

    @model_validator(mode="after")
    def _canonical_unique_names(self) -> DatasetFile:
        seen: set[str] = set()
        for d in self.datasets:
            if d.name != normalize_name(d.name) or "/" in d.name:
                raise ValueError(f"dataset name {d.name!r} is not canonical (lower case, '-', no slash)")
            if d.name in seen:
                raise ValueError(f"dataset {d.name!r} is listed twice")
            seen.add(d.name)
        return self


def _read_registry() -> list[tuple[str, DatasetInfo]]:
    import yaml

    # libyaml's loader where installed: 10x faster than the pure-Python one (the file is ours; tests read it with
    # the duplicate-key check of user specs as well).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    text = resources.files("ptst.resources").joinpath("datasets.yaml").read_text(encoding="utf-8")
    return [(d.name, d) for d in DatasetFile.model_validate(yaml.load(text, Loader=loader)).datasets]


def normalize_name(name: str) -> str:
    """Registry names are case-insensitive and `_` equals `-` (`GSM_Danger` is `gsm-danger`)."""
    return name.strip().lower().replace("_", "-")


def looks_like_path(value: str) -> bool:
    """The bare-string rule: a slash or a data-file extension means a file, anything else a registry name."""
    return "/" in value or "\\" in value or PurePath(value).suffix.lower() in DATA_EXTENSIONS


REGISTRY: Registry[DatasetInfo] = Registry(
    "dataset", normalize=normalize_name, load=_read_registry, listing="ptst list datasets"
)
"""Dataset name -> DatasetInfo, read from `resources/datasets.yaml` on first use."""


def _check_metric(v: str) -> str:
    from ptst.metrics import TASK_METRICS  # lazy: metrics imports nothing from here, but keep the core acyclic

    return TASK_METRICS.entry(v).name  # built-in or a plugin's; an unknown name is one line with a did-you-mean


def lookup(name: str) -> DatasetInfo:
    """The registry entry for `name`; ValueError with a did-you-mean suggestion when unknown."""
    try:
        return REGISTRY[name]
    except UnknownName as e:
        if not looks_like_path(name):
            raise
        raise ValueError(f"unknown dataset {name!r}{did_you_mean(e.key, REGISTRY.names())}; to load a file, "
                         "write {path: ...}") from None


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
                f"dataset {info.name!r} has no split {self.split!r}{did_you_mean(self.split, info.splits)}"
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

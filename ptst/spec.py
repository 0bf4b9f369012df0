"""The experiment spec: one file that says what to fine-tune, how to test it, and how to judge it.

`load_spec` reads YAML, TOML or JSON, validates it with pydantic, then checks what pydantic cannot see alone (template
names, template modes each backend supports, dataset roles) and reports *every* problem with its field path, so a
user fixes a spec in one pass instead of one error per run. Reading the file safely (encodings, duplicate keys,
nesting, non-finite numbers) is `ptst.spec_io`'s job; checking the spec against the machine it would run on (files,
models, keys) is `ptst.preflight`'s.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ptst.backends.base import BackendSpec
from ptst.backends.registry import backend_class
from ptst.data import DatasetRef
from ptst.errors import SpecError
from ptst.judge.base import JudgeSpec
from ptst.spec_io import check_plain_data, field_path, parse_spec_file
from ptst.templates import BUILTIN, Template, UnknownTemplate, resolve
from ptst.types import SEED_MAX, GenerationConfig, Hyperparameters

MAX_PROBLEMS = 50
"""Problems listed at most; past that the spec is more likely the wrong file than fifty mistakes."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class SafetyMix(_Model):
    """Safety examples mixed into the fine-tuning data (the paper's safety-data mitigation)."""

    dataset: DatasetRef
    n: int | None = Field(None, ge=1, description="how many to mix in (deterministic sample); all if null")
    label: str | None = Field(None, min_length=1, description="its name in results (safety_mix); the dataset's if null")

    @property
    def name(self) -> str:
        return self.label or self.dataset.display_name()


class ExtraData(_Model):
    """More training data, appended to `train.dataset` in every job: helpful data of another kind, so a model that
    learns refusals also keeps answering that kind of request (Bianchi et al. 2024 mix their safety examples into
    general instructions). Unlike `safety_mix`, it is part of every job's data, not a comparison of its own."""

    dataset: DatasetRef
    n: int | None = Field(None, ge=1, description="how many rows to add (deterministic sample); all if null")


def _no_mix(value: Any) -> Any:
    """`"none"` is a spelling of null in a list of mixes (YAML users write it so the list reads as a comparison)."""
    return None if isinstance(value, str) and value.strip().lower() == "none" else value


# One mix or a list; the discriminator picks the arm by shape, so an error is reported once, at the field's own path.
Mixes = Annotated[
    Annotated[SafetyMix, Tag("union:one")] | Annotated[list[SafetyMix | None], Tag("union:list")],
    Discriminator(lambda v: "union:list" if isinstance(v, list) else "union:one"),
]


class TrainSpec(_Model):
    dataset: DatasetRef
    # Further datasets appended to `dataset` in every job (a multi-dataset training mix), before any safety mix.
    extra: list[ExtraData] = Field(default_factory=list, description="more datasets appended to dataset in every job")
    templates: list[str] = Field(min_length=1)
    hyperparameters: Hyperparameters = Hyperparameters()
    # One mix, none, or several (each its own set of jobs: "with and without in one spec"; null/"none" = no mix).
    safety_mix: Mixes | None = None
    seeds: list[Seed] = Field(default=[0], min_length=1)

    @field_validator("safety_mix", mode="before")
    @classmethod
    def _none_spelled(cls, v: Any) -> Any:
        return [_no_mix(m) for m in v] if isinstance(v, list) else _no_mix(v)

    @field_validator("safety_mix")
    @classmethod
    def _distinct_mixes(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one mix (null or \"none\" for fine-tuning without one)")
            names = [m.name if m is not None else None for m in v]
            dup = next((n for i, n in enumerate(names) if n in names[:i]), "")
            if dup != "":
                what = f"mix {dup!r} is listed twice" if dup is not None else "no-mix (null) is listed twice"
                raise ValueError(f"{what}; give each mix a distinct 'label'")
        return v

    @property
    def mixes(self) -> list[SafetyMix | None]:
        """Every mix of the spec, in order: one entry (possibly None) unless safety_mix is a list."""
        return list(self.safety_mix) if isinstance(self.safety_mix, list) else [self.safety_mix]


class EvalSpec(_Model):
    templates: list[str] = Field(min_length=1)
    safety: list[DatasetRef] = Field(default_factory=list)
    tasks: list[DatasetRef] = Field(default_factory=list)
    generation: GenerationConfig = GenerationConfig()
    evaluate_base: bool = Field(True, description="also evaluate each base model before fine-tuning (reference row)")
    # Intermediate checkpoints of each fine-tuned model, evaluated like final models (the paper's early-stopping
    # comparison): "none", "all" the backend saved, or the listed training steps.
    checkpoints: Literal["none", "all"] | list[Annotated[int, Field(ge=1)]] = Field(
        "none", description="evaluate saved checkpoints too: none, all, or a list of training steps"
    )

    def wants_checkpoint(self, step: int) -> bool:
        return self.checkpoints == "all" or (isinstance(self.checkpoints, list) and step in self.checkpoints)


class Spec(_Model):
    name: str = Field(min_length=1)
    backends: list[BackendSpec] = Field(min_length=1)
    train: TrainSpec | None = None
    eval: EvalSpec
    judge: JudgeSpec = JudgeSpec()
    # Several judges (each safety response judged by every one; results get rows per judge and their agreement).
    # The first is the primary judge: `judge` is set to it, so everything that reads one judge reads the primary.
    judges: list[JudgeSpec] | None = Field(None, min_length=1, description="several judges; the first is primary")
    templates: list[Template] = Field(default_factory=list, description="user-defined templates")
    budget_usd: float | None = Field(None, ge=0)
    data_dir: str | None = Field(None, description="folder searched for local copies of registry datasets")

    @field_validator("backends")
    @classmethod
    def _unique_backend_names(cls, v: list[BackendSpec]) -> list[BackendSpec]:
        names = [b.name for b in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"backend name {dup[0]!r} is used twice; give each entry a distinct 'label'")
        return v

    @model_validator(mode="after")
    def _one_judge_field(self) -> Spec:
        if self.judges is None:
            return self
        if "judge" in self.model_fields_set and self.judge != self.judges[0]:
            raise ValueError("judge and judges are both given; list every judge under judges (the first is primary)")
        object.__setattr__(self, "judge", self.judges[0])  # a dump re-validates: judge == judges[0] is accepted
        return self

    @property
    def judge_specs(self) -> list[JudgeSpec]:
        """Every judge of the run, the primary first."""
        return list(self.judges) if self.judges is not None else [self.judge]

    @property
    def custom_templates(self) -> dict[str, Template]:
        return {t.name: t for t in self.templates}

    def template(self, name: str) -> Template:
        return resolve(name, self.custom_templates)


# Location parts pydantic adds for validator functions and union arms; not field names.
_UNION_TAG = re.compile(r"^(function-|constrained-|literal\[|union:)|^(int|str|float|bool|none)$")


class _Hints:
    """"Did you mean" for an unknown field and what a missing field is, from the spec's schema (`ptst.spec_schema`),
    built on the first problem that needs it: a valid spec never pays for it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._schema: dict[str, Any] | None = None

    def fields(self, path: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
        from ptst.spec_schema import fields_at, spec_schema

        if self._schema is None:
            self._schema = spec_schema()
        return fields_at(self._schema, self.raw, path)

    def unknown(self, loc: tuple[Any, ...]) -> str:
        import difflib

        if not loc or not isinstance(loc[-1], str):
            return "unknown field"
        known = self.fields(loc[:-1])
        near = difflib.get_close_matches(loc[-1], list(known), n=1, cutoff=0.6)
        if near:
            return f"unknown field; did you mean {near[0]!r}?"
        return "unknown field" + (f" (known here: {', '.join(sorted(known))})" if 0 < len(known) <= 12 else "")

    def missing(self, loc: tuple[Any, ...]) -> str:
        if not loc or not isinstance(loc[-1], str):
            return "Field required"
        about = self.fields(loc[:-1]).get(loc[-1], {}).get("description")
        owner = self._owner(loc[:-1])
        return f"Field required{f' by the {owner}' if owner else ''}" + (f": {about}" if about else "")

    def _owner(self, path: tuple[Any, ...]) -> str:
        """`classifier judge`, `openai backend`: whose option a field is, from the raw `kind` at `path`."""
        value = self.raw
        for step in path:
            value = value[step] if isinstance(value, (dict, list)) and _has(value, step) else None
        if not isinstance(value, dict) or not path:
            return ""
        what = "judge" if path[0] in ("judge", "judges") else "backend" if path[0] == "backends" else ""
        kind = value.get("kind", "keyword" if what == "judge" else None)
        return f"{kind} {what}" if what and isinstance(kind, str) else ""


def _has(value: dict[Any, Any] | list[Any], step: Any) -> bool:
    return step in value if isinstance(value, dict) else isinstance(step, int) and 0 <= step < len(value)


def _pydantic_problems(err: ValidationError, prefix: tuple[Any, ...] = (), hints: _Hints | None = None) -> list[str]:
    """One `path: message` line per error. A backend's or judge's own options are validated inside a validator, so
    their errors arrive wrapped in a value error: they are unwrapped, so each names its own field path. `hints`
    adds "did you mean" to an unknown field and the description of a missing one."""
    by_path: dict[str, list[str]] = {}
    for e in err.errors(include_url=False):
        loc = prefix + tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, ValidationError):
            for line in _pydantic_problems(inner, loc, hints):
                by_path.setdefault(line, [])
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = hints.unknown(loc) if hints is not None else "unknown field"
        elif e["type"] == "missing" and hints is not None:
            msg = hints.missing(loc)
        by_path.setdefault(field_path(loc), []).append(" ".join(msg.split()))
    # The arms of a union (`int | "auto"`) fail separately at one path: one line says both.
    return [f"{path}: {'; or '.join(dict.fromkeys(msgs))}" if msgs else path for path, msgs in by_path.items()]


def _list(value: Any) -> list[Any]:
    """A raw field that should be a list, or [] when it is anything else (its type error is pydantic's to report)."""
    return value if isinstance(value, list) else []


def _template_problems(raw: dict[str, Any]) -> list[str]:
    """Template names and per-backend support, checked on the raw mapping so they surface even when other fields
    failed validation."""
    problems: list[str] = []
    custom: dict[str, Template] = {}
    for t in _list(raw.get("templates")):
        try:
            tt = Template.model_validate(t)
            custom[tt.name] = tt
        except (ValidationError, TypeError):
            pass
    backends = [b for b in _list(raw.get("backends")) if isinstance(b, dict)]
    for section in ("train", "eval"):
        section_raw = raw.get(section)
        names = _list(section_raw.get("templates")) if isinstance(section_raw, dict) else []
        for i, name in enumerate(names):
            if not isinstance(name, str):
                continue
            try:
                tpl = resolve(name, custom)
            except UnknownTemplate as e:
                problems.append(f"{section}.templates[{i}]: {e}")
                continue
            for b in backends:
                try:
                    cls = backend_class(str(b.get("kind")))
                except ValueError:
                    continue
                if tpl.mode not in cls.modes:
                    label = b.get("label") or b.get("kind")
                    problems.append(
                        f"{section}.templates[{i}]: {tpl.mode}-mode template {name!r} is not supported by backend "
                        f"{label!r} (it takes {'/'.join(sorted(cls.modes))} templates only); use a chat:* template"
                    )
                if section == "train" and tpl.examples and not cls.trains_with_example_turns:
                    label = b.get("label") or b.get("kind")
                    problems.append(
                        f"{section}.templates[{i}]: template {name!r} has example turns, which backend {label!r} "
                        "would train on as well as the answer; use it in eval.templates only"
                    )
    return problems


def _repeats(field: str, values: list[Any], what: str) -> list[str]:
    """One line per repeated entry of a list field: each would be the same job or cell twice, which the run store
    (one row per key) cannot hold."""
    first: dict[Any, int] = {}
    out = []
    for i, v in enumerate(values):
        if v in first:
            out.append(f"{field}[{i}]: {what} {v!r} is already {field}[{first[v]}]; remove the repeat")
        else:
            first[v] = i
    return out


def _semantic_problems(spec: Spec) -> list[str]:
    problems: list[str] = []
    if spec.train is not None:
        problems += _repeats("train.seeds", list(spec.train.seeds), "seed")
        problems += _repeats("train.templates", list(spec.train.templates), "template")
    problems += _repeats("eval.templates", list(spec.eval.templates), "template")
    for i, t in enumerate(spec.templates):
        if t.name in BUILTIN:
            problems.append(f"templates[{i}].name: {t.name!r} is a built-in template; choose another name")
    for i, task in enumerate(spec.eval.tasks):
        if task.metric_name() is None:
            problems.append(
                f"eval.tasks[{i}]: no task metric for {task.display_name()!r}; for a path dataset give "
                "metric: NAME or metrics: [NAME, ...] (e.g. gsm8k_strict_match, exact_match)"
            )
        first = next(j for j, t in enumerate(spec.eval.tasks) if t.display_name() == task.display_name())
        rows = {"metric": None, "metrics": None}
        if first < i and task.model_copy(update=rows) != spec.eval.tasks[first].model_copy(update=rows):
            problems.append(
                f"eval.tasks[{i}]: {task.display_name()!r} is listed again with other rows than eval.tasks[{first}]; "
                "a dataset listed twice may differ only in its metrics (or give it another file name)"
            )
    if spec.eval.checkpoints != "none" and spec.train is None:
        problems.append("eval.checkpoints: only fine-tuned models have checkpoints; add a train section or remove it")
    kinds = [(j.kind, sorted(j.options.items(), key=str)) for j in spec.judge_specs]
    for i, k in enumerate(kinds):
        if k in kinds[:i]:
            problems.append(f"judges[{i}]: the same judge as judges[{kinds.index(k)}]; remove one")
    if not spec.eval.safety and not spec.eval.tasks:
        problems.append("eval: give at least one safety benchmark (eval.safety) or task (eval.tasks)")
    return problems


def validate_spec(raw: Any, source: str = "spec") -> Spec:
    """Validate a parsed spec mapping; raise SpecError listing every problem with its field path."""
    if not isinstance(raw, dict):
        raise SpecError(source, ["(top level): the spec must be a mapping of fields (name, backends, train, eval...)"])
    value_problems = check_plain_data(source, raw)
    problems = _template_problems(raw)
    spec: Spec | None = None
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        problems = _pydantic_problems(e, hints=_Hints(raw)) + problems
    if spec is not None:
        problems += _semantic_problems(spec)
    # A field's own bound says it better ("less than or equal to 4294967295"); the generic line covers the rest.
    reported = {p.split(": ", 1)[0] for p in problems}
    problems += [p for p in value_problems if p.split(": ", 1)[0] not in reported]
    if problems:
        problems = list(dict.fromkeys(problems))
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        raise SpecError(source, problems)
    assert spec is not None
    return spec


def ptst_warning(spec: Spec) -> str | None:
    """Why a spec that fine-tunes has no PTST cell (trained without a safety prompt, tested with one), or None: such
    a run compares templates but cannot show the paper's effect, which a user would want to hear before paying."""
    if spec.train is None:
        return None
    if not any(spec.template(t).safety for t in spec.eval.templates):
        return ("eval.templates: none carries a safety prompt, so the run has no PTST cell (trained without a safety "
                "prompt, tested with one); add one such as chat:llama or chat:safe (ptst list templates)")
    if all(spec.template(t).safety for t in spec.train.templates):
        return ("train.templates: every one carries a safety prompt, so the run has no PTST cell (trained without "
                "a safety prompt, tested with one); add one without, such as chat:vanilla")
    return None


def judge_label(j: JudgeSpec) -> str:
    """`keyword`, `rubric:gpt-4-0613`: a judge as the validate summary names it."""
    model = j.options.get("model")
    return f"{j.kind}:{model}" if isinstance(model, str) else j.kind


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Read, override (`--set KEY=VALUE`, see ptst.overrides) and validate a spec file. Relative paths in it (and in
    its overrides) resolve against the spec file's folder, never the working directory (`resolve_paths`)."""
    from ptst.overrides import apply_overrides, mark_override_problems
    from ptst.spec_paths import resolve_paths

    p = Path(path)
    try:
        raw = apply_overrides(parse_spec_file(p), overrides)
        return validate_spec(resolve_paths(raw, p.expanduser().resolve().parent), str(p))
    except SpecError as e:
        marked = mark_override_problems(e, overrides)
        if marked is e:
            raise
        raise marked from e.__cause__  # the same problems, re-marked: its cause is what e wrapped, not e

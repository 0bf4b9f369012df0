"""The experiment spec: one file that says what to fine-tune, how to test it, and how to judge it.

`load_spec` reads YAML, TOML or JSON, validates it with pydantic, then checks what pydantic cannot see alone (template
names, template modes each backend supports, dataset roles) and reports *every* problem with its field path, so a
user fixes a spec in one pass instead of one error per run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ptst.backends.base import BackendSpec
from ptst.backends.registry import backend_class
from ptst.types import GenerationConfig, Hyperparameters
from ptst.data import DatasetRef
from ptst.errors import SpecError
from ptst.judge.base import JudgeSpec
from ptst.templates import BUILTIN, Template, UnknownTemplate, resolve


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SafetyMix(_Model):
    """Safety examples mixed into the fine-tuning data (the paper's safety-data mitigation)."""

    dataset: DatasetRef
    n: int | None = Field(None, ge=1, description="how many to mix in (deterministic sample); all if null")


class TrainSpec(_Model):
    dataset: DatasetRef
    templates: list[str] = Field(min_length=1)
    hyperparameters: Hyperparameters = Hyperparameters()
    safety_mix: SafetyMix | None = None
    seeds: list[int] = Field(default=[0], min_length=1)


class EvalSpec(_Model):
    templates: list[str] = Field(min_length=1)
    safety: list[DatasetRef] = Field(default_factory=list)
    tasks: list[DatasetRef] = Field(default_factory=list)
    generation: GenerationConfig = GenerationConfig()
    evaluate_base: bool = Field(True, description="also evaluate each base model before fine-tuning (reference row)")


class Spec(_Model):
    name: str = Field(min_length=1)
    backends: list[BackendSpec] = Field(min_length=1)
    train: TrainSpec | None = None
    eval: EvalSpec
    judge: JudgeSpec = JudgeSpec()
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

    @property
    def custom_templates(self) -> dict[str, Template]:
        return {t.name: t for t in self.templates}

    def template(self, name: str) -> Template:
        return resolve(name, self.custom_templates)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _pydantic_problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append(f"{_path(loc)}: {msg}")
    return problems


def _template_problems(raw: dict[str, Any]) -> list[str]:
    """Template names and per-backend support, checked on the raw mapping so they surface even when other fields
    failed validation."""
    problems: list[str] = []
    custom: dict[str, Template] = {}
    for t in raw.get("templates") or []:
        try:
            tt = Template.model_validate(t)
            custom[tt.name] = tt
        except (ValidationError, TypeError):
            pass
    backends = [b for b in raw.get("backends") or [] if isinstance(b, dict)]
    for section in ("train", "eval"):
        names = (raw.get(section) or {}).get("templates") if isinstance(raw.get(section), dict) else None
        if not isinstance(names, list):
            continue
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
    return problems


def _semantic_problems(spec: Spec) -> list[str]:
    problems: list[str] = []
    for i, t in enumerate(spec.templates):
        if t.name in BUILTIN:
            problems.append(f"templates[{i}].name: {t.name!r} is a built-in template; choose another name")
    for i, task in enumerate(spec.eval.tasks):
        if task.metric_name() is None:
            problems.append(
                f"eval.tasks[{i}]: no task metric for {task.display_name()!r}; "
                "known task metrics: gsm8k (exact_match); for a path dataset give metric: exact_match"
            )
    if not spec.eval.safety and not spec.eval.tasks:
        problems.append("eval: give at least one safety benchmark (eval.safety) or task (eval.tasks)")
    return problems


def validate_spec(raw: Any, source: str = "spec") -> Spec:
    """Validate a parsed spec mapping; raise SpecError listing every problem with its field path."""
    if not isinstance(raw, dict):
        raise SpecError(source, ["(top level): the spec must be a mapping of fields (name, backends, train, eval...)"])
    problems = _template_problems(raw)
    spec: Spec | None = None
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        problems = _pydantic_problems(e) + problems
    if spec is not None:
        problems += _semantic_problems(spec)
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    assert spec is not None
    return spec


def parse_spec_file(path: Path) -> Any:
    if not path.is_file():
        raise SpecError(str(path), ["file not found"])
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            return tomllib.loads(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise SpecError(str(path), [f"{where}: invalid YAML ({getattr(e, 'problem', e)})"]) from None
    except json.JSONDecodeError as e:
        raise SpecError(str(path), [f"line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})"]) from None
    except ValueError as e:  # tomllib.TOMLDecodeError subclasses ValueError
        raise SpecError(str(path), [f"invalid TOML ({e})"]) from None
    raise SpecError(str(path), [f"unknown spec format {suffix!r}; use .yaml, .yml, .toml or .json"])


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    return validate_spec(parse_spec_file(p), str(p))

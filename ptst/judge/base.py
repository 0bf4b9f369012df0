"""The Judge interface.

A judge sees the *raw* query (never the templated prompt) and the response. It returns a `Judgment`: `unsafe`
decides ASR; `score` is the 1-5 harmfulness score where the judge has one. A reply that cannot be scored stays
unscored (`unsafe=None`), never silently counted as safe or unsafe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from pydantic.json_schema import JsonDict

from ptst.registry import Registry

JUDGE_GROUP = "ptst.judges"

JUDGES: Registry[Any] = Registry(
    "judge kind", group=JUDGE_GROUP, check=lambda v: isinstance(v, type), expects="a judge class",
    default_attr="Judge",
)
"""Judge kind -> judge class: the built-in judges, then plugins of the `ptst.judges` entry-point group
(`myjudge = "my_pkg.judge:Judge"`). A class is imported when its kind is first used; `ptst list judges` shows the
first line of its module's docstring."""
for _kind in ("classifier", "keyword", "mock", "rubric"):
    JUDGES.add(_kind, f"ptst.judge.{_kind}:Judge")


@dataclass(frozen=True, slots=True)
class JudgeItem:
    query: str
    response: str


class Judgment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    unsafe: bool | None  # None: unscored
    score: int | None = None  # 1..5 where the judge scores
    raw: str | None = None  # the judge's reply, kept for audit
    error: str | None = None  # why it is unscored


# `judge_streaming`'s callback: verdicts that just came into existence, as (index of the item in the call, verdict).
OnVerdict = Callable[[Sequence[tuple[int, Judgment]]], None]


def _known_kinds(schema: JsonDict) -> None:
    """The kinds known when the schema is written (plugins included), so editors offer them."""
    kinds: list[JsonValue] = [*JUDGES.names()]
    schema["examples"] = kinds


class JudgeSpec(BaseModel):
    """The spec's `judge:` entry; keys other than `kind` are the judge's own options (validated by it)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: str = Field(
        "keyword", description="a judge kind (ptst list judges): built-in or a plugin's",
        json_schema_extra=_known_kinds,
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return JUDGES.entry(v).name  # open to plugins; a typo is one line naming the closest kind

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _validate_options(self) -> JudgeSpec:
        judge_class(self.kind).Options.model_validate(self.options)
        return self


class Judge(Protocol):
    kind: ClassVar[str]
    simulated: ClassVar[bool]

    @property
    def name(self) -> str:
        """Shown in results ("keyword", "rubric:gpt-4-0613")."""
        ...

    @property
    def version(self) -> str:
        """Changes whenever the same (query, response) could be judged differently: part of the cache key."""
        ...

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]: ...

    def judge_streaming(self, items: Sequence[JudgeItem], on_verdict: OnVerdict) -> None:
        """Hand verdicts to `on_verdict` as they exist (the runner stores them there and then, so a kill loses only
        the judge requests in flight)."""
        ...


class JudgeBase:
    """Options parsing and the streaming default shared by the built-in judges."""

    class Options(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, spec: JudgeSpec | None = None):
        self.options = self.Options.model_validate(spec.options if spec else {})

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        raise NotImplementedError

    def judge_streaming(self, items: Sequence[JudgeItem], on_verdict: OnVerdict) -> None:
        """Default for judges that cost nothing per call (keyword, mock): one call, all its verdicts at once."""
        verdicts = self.judge(items)
        if len(verdicts) != len(items):
            raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(items)} items")
        on_verdict(list(enumerate(verdicts)))


def judge_class(kind: str) -> Any:
    """The judge class for a kind, imported on first use; a ValueError naming the closest kind when unknown."""
    return JUDGES[kind]


def create_judge(spec: JudgeSpec) -> Judge:
    return judge_class(spec.kind)(spec)  # type: ignore[no-any-return]

"""The judge contract: what every judge is asked, each hook explicit, as `FineTuneBackend` is for backends.

A judge sees the *raw* query (never the templated prompt) and the response. It returns a `Judgment`: `unsafe`
decides ASR; `score` is the 1-5 harmfulness score where the judge has one. A reply that cannot be scored stays
unscored (`unsafe=None`), never silently counted as safe or unsafe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class JudgeContext:
    """What a judge may need from the rest of the spec, found by the core (`ptst.judging`) so that no judge imports a
    backend: the OpenAI-compatible endpoints the spec's backends talk to (URL -> the key settings, `api_key_env` /
    `api_key_file`, of the first backend using it), each backend class saying so through
    `FineTuneBackend.judge_endpoint`. The rubric judge's `base_url: inherit` is resolved from it."""

    endpoints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class JudgeOptions(BaseModel):
    """The options of a judge that has none: any key in its spec entry beyond `kind` is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Judge(ABC):
    """What the runner, `ptst validate` and `ptst estimate` need from a judge. Subclass it, set the class attributes,
    implement `name`, `version` and `judge`; override the other hooks where the defaults do not hold.

    Class attributes:
      kind       the spec's `kind:` value (also the registry key)
      simulated  True only for simulations: every result built on it is labelled simulated
      paid       True for a judge billed per verdict (an API): `ptst estimate` counts its calls and prices them
                 through `judging_usd`, and the budget gate holds it to `budget_usd`, wherever it stands in
                 `judges:`; False for a judge that costs nothing per call (it runs here, or is a simulation)
      Options    its options model (a frozen pydantic model; unknown keys are errors); a subclass narrows `options`
    """

    kind: ClassVar[str] = ""
    simulated: ClassVar[bool] = False
    paid: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = JudgeOptions
    options: BaseModel

    def __init__(self, spec: JudgeSpec | None = None, context: JudgeContext | None = None):
        self.options = self.Options.model_validate(spec.options if spec else {})
        self.context = context if context is not None else JudgeContext()

    # -- identity ------------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def name(self) -> str:
        """Shown in results ("keyword", "rubric:gpt-4-0613"); with `version`, the key its verdicts are cached under."""

    @property
    @abstractmethod
    def version(self) -> str:
        """Changes whenever the same (query, response) could be judged differently: part of the cache key."""

    def api_model(self) -> str | None:
        """The model this judge calls on a vendor's API (checked against the retired models, listed as unchecked
        offline); None for a judge that calls none."""
        return None

    # -- before anything is spent ----------------------------------------------------------------------------------
    def preflight(self) -> list[str]:
        """Problems `ptst validate` can find offline, one line each naming the spec field and what to do. A line
        starting with "warning: " is a warning; one starting with "credentials: " is a missing credential (an error
        for `validate` and `run`, a warning for `estimate`, which spends nothing). Must not touch the network or
        load a model."""
        return []

    def judging_usd(self, queries: Sequence[str], response_tokens: float, *, at_most: bool = False) -> float | None:
        """USD of judging, for each raw query, one response of `response_tokens` tokens (an average: the estimate
        calls it with the expected length and with max_new_tokens). `at_most`: each verdict at its longest (the
        bound `usd_max`), else at its expected length. Called only for a `paid` judge; None: the price is unknown,
        which the estimate reports as such and the budget gate refuses without --yes. Default: unknown."""
        return None

    def estimate_notes(self) -> list[str]:
        """Lines `ptst estimate` prints about how this judge's numbers were reached (the verdict length, a batch
        discount, a missing price)."""
        return []

    # -- work ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        """One verdict per item, in order."""

    def judge_streaming(self, items: Sequence[JudgeItem], on_verdict: OnVerdict) -> None:
        """Hand verdicts to `on_verdict` as they exist (the runner stores them there and then, so a kill loses only
        the judge requests in flight). Default, for judges that cost nothing per call: one call, then all its
        verdicts at once."""
        verdicts = self.judge(items)
        if len(verdicts) != len(items):
            raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(items)} items")
        on_verdict(list(enumerate(verdicts)))


JudgeBase = Judge  # its former name, for judges written against it


def judge_class(kind: str) -> type[Judge]:
    """The judge class for a kind, imported on first use; a ValueError naming the closest kind when unknown."""
    cls: type[Judge] = JUDGES[kind]
    return cls


def create_judge(spec: JudgeSpec, context: JudgeContext | None = None) -> Judge:
    """The judge of one spec entry; `context` is what it may need from the rest of the spec (`ptst.judging`)."""
    return judge_class(spec.kind)(spec, context)

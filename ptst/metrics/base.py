"""The `TaskMetric` interface: every task metric scores a whole cell (responses against references) at once.

Most task metrics are per-item (GSM8K exact match, ARC letter accuracy): a verdict per response, a rate per cell,
a Wilson interval around it. Some are corpus-level (BERTScore loads a model once and scores every pair together,
with no correct/incorrect per item). One interface fits both, so the runner calls `metric.score(responses,
references)` without knowing which kind it has; per-item metrics are also callable on one pair, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ptst.metrics.intervals import rate, wilson_interval


class MetricValue(BaseModel):
    """A metric's value for one cell. `value` is None for an empty cell (no items: no score, not 0)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    metric: str
    n: int = Field(ge=0)
    value: float | None
    ci95: tuple[float, float] | None = Field(default=None, description="95% interval around value, if it has one")
    k: int | None = Field(default=None, description="items scored correct, for per-item metrics")
    details: Mapping[str, Any] = Field(default_factory=dict, description="metric-specific extras (P/R, model...)")


@runtime_checkable
class TaskMetric(Protocol):
    """What the runner needs from a task metric."""

    @property
    def name(self) -> str: ...

    @property
    def level(self) -> Literal["item", "corpus"]: ...

    def score(self, responses: Sequence[str], references: Sequence[str]) -> MetricValue: ...


def _aligned(name: str, responses: Sequence[str], references: Sequence[str]) -> None:
    if len(responses) != len(references):
        raise ValueError(f"{name}: {len(responses)} responses but {len(references)} references")


@dataclass(frozen=True)
class ItemMetric:
    """A per-item metric: `item(response, reference) -> correct?`; the cell's value is the rate, with Wilson CI."""

    name: str
    item: Callable[[str, str], bool]
    description: str = ""
    level: ClassVar[Literal["item", "corpus"]] = "item"

    def __call__(self, response: str, reference: str) -> bool:
        return self.item(response, reference)

    def score(self, responses: Sequence[str], references: Sequence[str]) -> MetricValue:
        _aligned(self.name, responses, references)
        k = sum(1 for r, ref in zip(responses, references, strict=True) if self.item(r, ref))
        n = len(responses)
        return MetricValue(metric=self.name, n=n, k=k, value=rate(k, n), ci95=wilson_interval(k, n) if n else None)


@dataclass(frozen=True)
class CorpusMetric:
    """A corpus-level metric: `corpus(responses, references) -> MetricValue` sees the whole cell at once."""

    name: str
    corpus: Callable[[Sequence[str], Sequence[str]], MetricValue]
    description: str = ""
    level: ClassVar[Literal["item", "corpus"]] = "corpus"

    def score(self, responses: Sequence[str], references: Sequence[str]) -> MetricValue:
        _aligned(self.name, responses, references)
        return self.corpus(responses, references)


def join_metrics(names: Sequence[str]) -> str:
    """A task cell's metrics as one string (order kept, repeats dropped): one cell's responses are generated once
    and scored by each metric, a results row each. A single metric is its own name, so such cells keep their key."""
    return ",".join(dict.fromkeys(names))


def split_metrics(joined: str | None) -> tuple[str, ...]:
    """The metrics of a task cell, from `join_metrics`'s string."""
    return tuple(m for m in (joined or "").split(",") if m)

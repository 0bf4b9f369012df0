"""ChatDoctor helpfulness: BERTScore of the model's answer against the doctor's answer, as ChatDoctor is scored.

ChatDoctor (Li et al., 2023) reports BERTScore precision, recall and F1 between model and doctor answers, and the
PTST paper follows it for its ChatDoctor fine-tunes. ptst calls the reference implementation, the `bert-score`
package (extra `bertscore`), rather than re-deriving it: the number depends on the encoder, its layer, idf
weighting and baseline rescaling, and all of them are recorded in the result so two numbers are only ever
compared when they were computed the same way. The defaults are the package's own for English (`lang="en"`:
roberta-large, layer 17, no idf, not rescaled).

The model is loaded by `transformers` from a hub id (local cache only when offline) or a local directory; a model
that is not one of bert-score's known names needs an explicit `num_layers`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ptst.errors import PtstError, first_line, require
from ptst.metrics.base import MetricValue
from ptst.metrics.intervals import Z95

DEFAULT_MODEL = "roberta-large"


class MetricUnavailable(PtstError):
    """A metric's model or files cannot be loaded (user-fixable: cache the model or point at a local copy)."""

    exit_code = 2


class BertScore(BaseModel):
    """Corpus BERTScore: the means of the per-pair P/R/F1, with the settings that produced them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int = Field(ge=0)
    precision: float | None
    recall: float | None
    f1: float | None
    f1_ci95: tuple[float, float] | None = Field(
        description="normal-approximation 95% interval of the mean F1 (None for n < 2)"
    )
    f1_items: tuple[float, ...] = Field(description="per-pair F1, in input order")
    model_type: str
    num_layers: int | None
    idf: bool
    rescale_with_baseline: bool
    lang: str | None
    baseline_path: str | None = None
    settings: str | None = Field(default=None, description="bert-score's own hash of its settings and versions")


def _mean_ci(xs: Sequence[float]) -> tuple[float, float] | None:
    n = len(xs)
    if n < 2:
        return None
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return (m - Z95 * sd / math.sqrt(n), m + Z95 * sd / math.sqrt(n))


def bertscore(
    responses: Sequence[str],
    references: Sequence[str],
    *,
    model_type: str = DEFAULT_MODEL,
    num_layers: int | None = None,
    lang: str | None = "en",
    idf: bool = False,
    rescale_with_baseline: bool = False,
    baseline_path: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> BertScore:
    """BERTScore of each response against its reference, averaged over the corpus.

    `model_type` is a hub id or a local model directory; `num_layers` defaults to bert-score's tuned layer for
    known models. `rescale_with_baseline` needs `lang` and a baseline (bert-score ships them for its known models;
    `baseline_path` names a custom one). Raises MissingExtra without the `bertscore` extra, MetricUnavailable when
    the model cannot be loaded.
    """
    if len(responses) != len(references):
        raise ValueError(f"bertscore: {len(responses)} responses but {len(references)} references")
    common: dict[str, Any] = {
        "model_type": model_type,
        "num_layers": num_layers,
        "idf": idf,
        "rescale_with_baseline": rescale_with_baseline,
        "lang": lang,
        "baseline_path": baseline_path,
    }
    if not responses:
        return BertScore(n=0, precision=None, recall=None, f1=None, f1_ci95=None, f1_items=(), **common)
    bert_score = require("bert_score", "BERTScore (ChatDoctor's metric)", "bertscore")
    if num_layers is None:
        from bert_score.utils import model2layers  # type: ignore[import-untyped]

        if model_type not in model2layers:
            raise MetricUnavailable(
                f"BERTScore model {model_type!r} has no default layer in bert-score; give num_layers"
            )
        num_layers = model2layers[model_type]
    baseline = _baseline(bert_score, model_type, num_layers, lang, baseline_path) if rescale_with_baseline else None
    # bert-score scores a pair with an empty side as raw 0 (then rescales it). Its own path for that calls a
    # tokenizer method transformers 5 removed, so ptst applies the same rule itself and sends only the rest.
    empty: tuple[float, float, float] = (0.0, 0.0, 0.0)
    if baseline is not None:
        empty = (
            (0.0 - baseline[0]) / (1.0 - baseline[0]),
            (0.0 - baseline[1]) / (1.0 - baseline[1]),
            (0.0 - baseline[2]) / (1.0 - baseline[2]),
        )
    keep = [i for i, (c, r) in enumerate(zip(responses, references, strict=True)) if c.strip() and r.strip()]
    scores: list[tuple[float, float, float]] = [empty] * len(responses)
    settings = None
    if keep:
        try:
            (p, r, f), settings = bert_score.score(
                [responses[i] for i in keep],
                [references[i] for i in keep],
                model_type=model_type,
                num_layers=num_layers,
                lang=lang,
                idf=idf,
                rescale_with_baseline=rescale_with_baseline,
                baseline_path=baseline_path,
                batch_size=batch_size,
                device=device,
                return_hash=True,
            )
        except OSError as e:  # transformers cannot find the model (offline and not cached, or a wrong path)
            raise MetricUnavailable(
                f"BERTScore model {model_type!r} could not be loaded ({first_line(e)}); "
                "cache it (huggingface-cli download) or give a local model directory"
            ) from e
        for i, triple in zip(keep, zip(p.tolist(), r.tolist(), f.tolist(), strict=True), strict=True):
            scores[i] = triple
    n = len(scores)
    f1_items = tuple(s[2] for s in scores)
    return BertScore(
        n=n,
        precision=sum(s[0] for s in scores) / n,
        recall=sum(s[1] for s in scores) / n,
        f1=sum(f1_items) / n,
        f1_ci95=_mean_ci(f1_items),
        f1_items=f1_items,
        settings=None if settings is None else str(settings),
        **{**common, "num_layers": num_layers},
    )


def _baseline(
    bert_score: Any, model_type: str, num_layers: int, lang: str | None, baseline_path: str | None
) -> tuple[float, float, float]:
    """The (P, R, F) baseline bert-score rescales with: row `num_layers` of its file (header LAYER,P,R,F).

    bert-score only warns and silently skips rescaling when the file is missing; a result labelled rescaled that
    is not would be worse than an error, so a missing file is one.
    """
    if lang is None:
        raise MetricUnavailable("BERTScore rescale_with_baseline needs lang (e.g. 'en')")
    path = Path(baseline_path) if baseline_path else Path(bert_score.__file__).parent / "rescale_baseline" / lang
    if not baseline_path:
        path = path / f"{model_type}.tsv"
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise MetricUnavailable(
            f"BERTScore has no rescaling baseline for {model_type!r} ({lang}) at {path}; give baseline_path "
            "or turn rescale_with_baseline off"
        ) from e
    try:
        p, r, f = (float(x) for x in rows[1 + num_layers][1:4])
    except (IndexError, ValueError) as e:
        raise MetricUnavailable(f"{path}: no P,R,F baseline row for layer {num_layers}") from e
    return (p, r, f)


def chatdoctor_bertscore(responses: Sequence[str], references: Sequence[str], **options: Any) -> MetricValue:
    """The `chatdoctor_bertscore` task metric: mean BERTScore F1, with P, R and the settings in `details`.

    `options` go to `bertscore` (model_type, num_layers, ...); the task metric uses the defaults.
    """
    s = bertscore(responses, references, **options)
    return MetricValue(
        metric="chatdoctor_bertscore",
        n=s.n,
        value=s.f1,
        ci95=s.f1_ci95,
        details={
            "precision": s.precision,
            "recall": s.recall,
            "model_type": s.model_type,
            "num_layers": s.num_layers,
            "idf": s.idf,
            "rescale_with_baseline": s.rescale_with_baseline,
            "settings": s.settings,
        },
    )

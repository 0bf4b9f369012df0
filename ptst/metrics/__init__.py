"""Metrics: attack success rate with a Wilson interval, task metrics (GSM8K, ARC, ChatDoctor) and statistics.

Plain functions on plain numbers and strings, no heavy dependencies at import (BERTScore imports its package only
when it runs), so the runner and the reports can call them on every cell.

    intervals  rate, wilson_interval, round_ci
    stats      mean, seed_summary, mcnemar_p, discordant, paired_mcnemar, confusion_2x2, cohen_kappa
    base       TaskMetric, ItemMetric, CorpusMetric, MetricValue
    gsm8k      lm-evaluation-harness strict-match / flexible-extract, and ptst's older lenient exact_match
    arc        ARC prompt format and answer-letter accuracy
    chatdoctor BERTScore (extra `bertscore`)
    refusal    refusal rate on harmless requests (over-refusal), by the keyword judge's phrases
"""

from __future__ import annotations

from ptst.metrics.arc import arc_letter_accuracy, arc_row, extract_arc_letter, format_arc_prompt
from ptst.metrics.base import CorpusMetric, ItemMetric, MetricValue, TaskMetric, join_metrics, split_metrics
from ptst.metrics.chatdoctor import BertScore, MetricUnavailable, bertscore, chatdoctor_bertscore
from ptst.metrics.gsm8k import (
    cut_at_stop,
    extract_gsm8k_answer,
    gsm8k_exact_match,
    gsm8k_flexible_extract,
    gsm8k_flexible_filter,
    gsm8k_harness_normalise,
    gsm8k_reference,
    gsm8k_strict_filter,
    gsm8k_strict_match,
)
from ptst.metrics.intervals import Z95, rate, round_ci, wilson_interval
from ptst.metrics.refusal import refusal_item, refuses
from ptst.metrics.stats import (
    Confusion2x2,
    McNemar,
    SeedSummary,
    cohen_kappa,
    confusion_2x2,
    discordant,
    mcnemar_p,
    mean,
    paired_mcnemar,
    seed_summary,
)
from ptst.registry import Registry

METRIC_GROUP = "ptst.metrics"

TASK_METRICS: Registry[TaskMetric] = Registry(
    "task metric", group=METRIC_GROUP, check=lambda v: isinstance(v, TaskMetric),
    expects="a task metric (an ItemMetric, a CorpusMetric or another TaskMetric: name, level, score)",
)
"""Metric name (as in the spec and results.json `metric`) -> TaskMetric: the built-in metrics, then plugins of the
`ptst.metrics` entry-point group (`bleu = "my_pkg.metrics:BLEU"`, an ItemMetric or CorpusMetric object). Per-item
metrics are also callable as `scorer(response, reference) -> bool`; corpus metrics only have `.score(responses,
references)`."""
for _m in (
    ItemMetric("exact_match", gsm8k_exact_match, "ptst's lenient GSM8K rule (numeric equality of final numbers)"),
    # the same lenient rule under a name that says what it is (the paper specs report it beside the harness's)
    ItemMetric("gsm8k_lenient", gsm8k_exact_match, "ptst's lenient GSM8K rule (numeric equality of final numbers)"),
    ItemMetric("gsm8k_strict_match", gsm8k_strict_match, "lm-evaluation-harness gsm8k exact_match,strict-match"),
    ItemMetric(
        "gsm8k_flexible_extract", gsm8k_flexible_extract, "lm-evaluation-harness gsm8k exact_match,flexible-extract"
    ),
    ItemMetric("arc_letter_accuracy", arc_letter_accuracy, "ARC: the response's choice letter is the key's"),
    CorpusMetric("chatdoctor_bertscore", chatdoctor_bertscore, "ChatDoctor: mean BERTScore F1 (roberta-large L17)"),
    ItemMetric("refusal_rate", refusal_item,
               "harmless prompts: share refused (keyword judge's phrases); lower is better, reference unused"),
):
    TASK_METRICS.add(_m.name, _m)

__all__ = [
    "METRIC_GROUP",
    "TASK_METRICS",
    "Z95",
    "BertScore",
    "Confusion2x2",
    "CorpusMetric",
    "ItemMetric",
    "McNemar",
    "MetricUnavailable",
    "MetricValue",
    "SeedSummary",
    "TaskMetric",
    "arc_letter_accuracy",
    "arc_row",
    "bertscore",
    "chatdoctor_bertscore",
    "cohen_kappa",
    "confusion_2x2",
    "cut_at_stop",
    "discordant",
    "extract_arc_letter",
    "extract_gsm8k_answer",
    "format_arc_prompt",
    "gsm8k_exact_match",
    "gsm8k_flexible_extract",
    "gsm8k_flexible_filter",
    "gsm8k_harness_normalise",
    "gsm8k_reference",
    "gsm8k_strict_filter",
    "gsm8k_strict_match",
    "join_metrics",
    "mcnemar_p",
    "mean",
    "paired_mcnemar",
    "rate",
    "refusal_item",
    "refuses",
    "round_ci",
    "seed_summary",
    "split_metrics",
    "wilson_interval",
]

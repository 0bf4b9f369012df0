"""Statistics: rates, seed summaries, paired McNemar and Cohen's kappa, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from ptst.metrics import (
    TASK_METRICS,
    Confusion2x2,
    TaskMetric,
    cohen_kappa,
    confusion_2x2,
    mcnemar_p,
    paired_mcnemar,
    rate,
    seed_summary,
)

T, F = True, False


def test_rate_is_none_without_items() -> None:
    assert rate(0, 0) is None  # no items: no rate, not "0% unsafe"
    assert rate(0, 4) == 0.0
    assert rate(3, 4) == 0.75
    for bad in [(5, 4), (-1, 4), (0, -1)]:
        with pytest.raises(ValueError):
            rate(*bad)


def test_every_task_metric_fits_the_interface() -> None:
    assert set(TASK_METRICS) == {
        "exact_match",
        "gsm8k_lenient",
        "gsm8k_strict_match",
        "gsm8k_flexible_extract",
        "arc_letter_accuracy",
        "chatdoctor_bertscore",
        "refusal_rate",
    }
    for name, metric in TASK_METRICS.items():
        assert isinstance(metric, TaskMetric) and metric.name == name
    assert {n for n, m in TASK_METRICS.items() if m.level == "corpus"} == {"chatdoctor_bertscore"}


def test_empty_cell_has_no_value() -> None:
    v = TASK_METRICS["exact_match"].score([], [])
    assert (v.n, v.k, v.value, v.ci95) == (0, 0, None, None)
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        TASK_METRICS["exact_match"].score(["a", "b"], ["#### 1"])


def test_seed_summary() -> None:
    assert seed_summary([]) == (0, None, None)
    assert seed_summary([0.3]) == (1, 0.3, None)  # one seed: no spread to report
    n, m, s = seed_summary([0.1, 0.2, 0.3])  # deviations -0.1, 0, 0.1: variance 0.02 / 2 = 0.01
    assert (n, m, s) == (3, pytest.approx(0.2), pytest.approx(0.1))
    # 2,4,4,4,5,5,7,9: mean 5, squared deviations sum to 32, sample variance 32/7.
    n, m, s = seed_summary([2, 4, 4, 4, 5, 5, 7, 9])
    assert (n, m) == (8, 5.0) and s == pytest.approx(math.sqrt(32 / 7))
    assert seed_summary([0.5, 0.5]).std == 0.0


def test_paired_mcnemar_counts_and_exact_p() -> None:
    first = [T, F, F, F, F, F, F, T, F]
    second = [F, T, T, T, T, T, T, T, F]
    # b = 1 (query 0), c = 6 (queries 1-6); queries 7 and 8 agree. p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128.
    assert paired_mcnemar(first, second) == (1, 6, 0.125)
    assert paired_mcnemar(second, first) == (6, 1, 0.125)
    assert paired_mcnemar([T, F], [T, F]) == (0, 0, 1.0)
    assert mcnemar_p(1, 6) == 0.125 and mcnemar_p(0, 0) == 1.0
    assert paired_mcnemar([], []) == (0, 0, 1.0)
    with pytest.raises(ValueError):
        paired_mcnemar([T], [T, F])


def _verdicts(both_true: int, first_only: int, second_only: int, both_false: int) -> tuple[list[bool], list[bool]]:
    first = [T] * both_true + [T] * first_only + [F] * second_only + [F] * both_false
    second = [T] * both_true + [F] * first_only + [T] * second_only + [F] * both_false
    return first, second


def test_confusion_table() -> None:
    t = confusion_2x2([T, T, F, F, T], [T, F, T, F, T])
    assert t == Confusion2x2(both_true=2, first_only=1, second_only=1, both_false=1)
    assert t.n == 5
    with pytest.raises(ValueError):
        confusion_2x2([T], [])


@pytest.mark.parametrize(
    ("cells", "kappa"),
    [
        # The textbook example (as on Wikipedia's "Cohen's kappa"): 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no.
        # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4.
        ((20, 5, 10, 15), 0.4),
        # Its second example: 45, 15, 25, 15 -> p_o = 0.60, p_e = 0.6*0.7 + 0.4*0.3 = 0.54, kappa = 0.06/0.46.
        ((45, 15, 25, 15), 0.06 / 0.46),
        ((3, 0, 0, 2), 1.0),  # perfect agreement
        ((0, 1, 1, 0), -1.0),  # perfect disagreement with balanced rates: p_o = 0, p_e = 0.5
        ((0, 4, 0, 0), 0.0),  # one judge always True, the other always False: p_o = p_e = 0
    ],
)
def test_cohen_kappa(cells: tuple[int, int, int, int], kappa: float) -> None:
    assert cohen_kappa(*_verdicts(*cells)) == pytest.approx(kappa, abs=1e-12)


def test_cohen_kappa_undefined_cases() -> None:
    assert cohen_kappa([], []) is None
    assert cohen_kappa([T, T, T], [T, T, T]) is None  # both always True: chance agreement is already 1
    assert cohen_kappa([F, F], [F, F]) is None

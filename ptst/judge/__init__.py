"""Judges score responses to harmful queries, the same way for every backend, so vendors are comparable."""

from ptst.judge.base import (
    JUDGE_MODULES,
    Judge,
    JudgeItem,
    JudgeSpec,
    Judgment,
    create_judge,
)

__all__ = ["JUDGE_MODULES", "Judge", "JudgeItem", "JudgeSpec", "Judgment", "create_judge"]

"""Judges score responses to harmful queries, the same way for every backend, so vendors are comparable."""

from ptst.judge.base import (
    JUDGES,
    Judge,
    JudgeItem,
    JudgeSpec,
    Judgment,
    create_judge,
)

__all__ = ["JUDGES", "Judge", "JudgeItem", "JudgeSpec", "Judgment", "create_judge"]

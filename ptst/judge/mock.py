"""A SIMULATED judge for CI smoke tests: it scores without any model, and results built on it say so.

It recognises the mock backend's canned compliance (score 5) and refusal (score 1); any other response gets a
hash-seeded score, so it is deterministic but means nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar

from ptst.judge import base
from ptst.judge.base import JudgeItem, Judgment
from ptst.judge.keyword import is_refusal


class Judge(base.Judge):
    kind: ClassVar[str] = "mock"
    simulated: ClassVar[bool] = True  # `ptst validate` warns and every result built on it is labelled simulated
    paid: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return "mock"

    @property
    def version(self) -> str:
        return "mock-1"

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        out = []
        for it in items:
            if it.response.startswith("[simulated] Sure"):
                score = 5
            elif is_refusal(it.response):
                score = 1
            else:
                score = 1 + hashlib.blake2b(f"{it.query}\x1f{it.response}".encode(), digest_size=1).digest()[0] % 5
            out.append(Judgment(unsafe=score == 5, score=score, raw=f"[simulated] #thescore: {score}"))
        return out

"""The spec's judges, built with what they need from the rest of the spec.

A judge knows no backend (`ptst.judge` imports `ptst.clients`, never `ptst.backends`), yet the rubric judge's
`base_url: inherit` means "the endpoint of the spec's openai backend". The core finds those endpoints here, through
the backend registry and each backend class's `judge_endpoint`, and hands them to every judge in a `JudgeContext`.
The runner, `ptst validate` and `ptst estimate` build judges only through `create_judges`, so all three see the same
judges, in the order of `judges:` (the first is the primary one).
"""

from __future__ import annotations

from typing import Any

from ptst.judge.base import Judge, JudgeContext, JudgeSpec, create_judge
from ptst.spec import Spec


def judge_context(spec: Spec) -> JudgeContext:
    """The OpenAI-compatible endpoints of the spec's backends: URL -> the key settings of the first backend using it."""
    from ptst.backends.registry import backend_class

    endpoints: dict[str, dict[str, Any]] = {}
    for b in spec.backends:
        found = backend_class(b.kind).judge_endpoint(b.options)
        if found is not None:
            url, keys = found
            endpoints.setdefault(url, keys)
    return JudgeContext(endpoints=endpoints)


def create_judges(spec: Spec) -> list[Judge]:
    """Every judge of the spec, the primary first. Raises the judge's own error (a SpecError for a `base_url:
    inherit` with no openai backend, or an ambiguous one)."""
    context = judge_context(spec)
    return [create_judge(js, context) for js in spec.judge_specs]


def create_one(spec: Spec, judge: JudgeSpec) -> Judge:
    """One judge entry of the spec, built as `create_judges` builds it (for `ptst validate`, which reports each
    judge's problems on its own)."""
    return create_judge(judge, judge_context(spec))

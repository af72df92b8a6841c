"""What decoded JSON from outside may be: at most :data:`MAX_DEPTH` deep, every number finite.
One check for the jobs (:mod:`sender.models`) and the provider webhooks
(:mod:`webhooks.providers.base`), each of which words the refusal its own way."""

from __future__ import annotations

import math
from typing import Any, Literal

MAX_DEPTH = 64  # levels of objects and arrays

Problem = Literal["too_deep", "not_finite"]


def problem(data: Any) -> Problem | None:
    """Why decoded JSON is refused (nested too deep, a number out of range), or None.
    Iterative: a hostile depth cannot exhaust the stack of the check itself."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        elif isinstance(value, float) and not math.isfinite(value):
            return "not_finite"
        else:
            continue
        if depth > MAX_DEPTH:
            return "too_deep"
        stack.extend((child, depth + 1) for child in children)
    return None

"""What decoded JSON from outside may be: at most :data:`MAX_DEPTH` deep, every number finite.
One check for the jobs (:mod:`sender.models`) and the provider webhooks
(:mod:`webhooks.providers.base`), each of which words the refusal its own way.

And :func:`compact`, the one writer of the JSON Outbox publishes on the hot path (status
events, log lines): pydantic-core's serializer (Rust, already installed with pydantic), about
five times faster than the standard library's for a status event, the same bytes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic_core import to_json

MAX_DEPTH = 64  # levels of objects and arrays

Problem = Literal["too_deep", "not_finite"]

_LEAVES = (str, int, bool, type(None))


def problem(data: Any) -> Problem | None:
    """Why decoded JSON is refused (nested too deep, a number out of range), or None.
    Iterative: a hostile depth cannot exhaust the stack of the check itself. Only
    containers are stacked; the leaves (most of a job) are looked at where they are."""
    if type(data) is float:
        return None if math.isfinite(data) else "not_finite"
    if not isinstance(data, (dict, list)):
        return None
    stack: list[tuple[Any, int]] = [(data, 1)]
    isfinite = math.isfinite
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "too_deep"
        for child in (value.values() if isinstance(value, dict) else value):
            kind = type(child)
            if kind in _LEAVES:
                continue
            if kind is float:
                if not isfinite(child):
                    return "not_finite"
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not isfinite(child):
                return "not_finite"
    return None


def compact(value: Any, *, fallback: Callable[[Any], Any] | None = None) -> bytes:
    """``value`` as compact JSON in UTF-8 (non-ASCII as it is, keys in their order), as
    ``json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)`` writes
    it. NaN or an infinity raises ValueError, as there: the serializer writes them as
    ``NaN``/``Infinity`` tokens and only output holding one of those words (in a string
    too, so rarely) is written again by the standard library, which raises for a number and
    writes a string as it is. ``fallback``: what a value JSON has no form for becomes (the
    standard library's ``default``); without it such a value raises TypeError. Whatever the
    fast serializer refuses (bytes that are not UTF-8, say) is written by the standard
    library, with its verdict."""
    try:
        out = to_json(value, inf_nan_mode="constants", fallback=fallback)
    except Exception:  # pydantic-core's PydanticSerializationError
        out = b"NaN"  # the standard library decides
    if b"NaN" in out or b"Infinity" in out:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                          default=fallback).encode()
    return out

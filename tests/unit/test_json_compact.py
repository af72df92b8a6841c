"""suppression.json_limits: the fast JSON writer of the hot path (status events, kept job
metadata) against the standard library's, and the limits check against a plain walk."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suppression.json_limits import MAX_DEPTH, compact, problem

_LEAF = st.none() | st.booleans() | st.integers() | st.text() | \
    st.floats(allow_nan=False, allow_infinity=False)
_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)
_NO_FLOATS = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                          lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=30)


def _stdlib(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode()


@given(_NO_FLOATS)
def test_the_same_bytes_as_the_standard_library_without_floats(value: Any) -> None:
    assert compact(value) == _stdlib(value)


@given(_JSON)
def test_floats_read_back_the_same(value: Any) -> None:
    """A float may be written another way (``1e-7`` for ``1e-07``), never another value."""
    assert json.loads(compact(value)) == json.loads(_stdlib(value))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_number_json_has_not_raises_as_the_standard_library_does(bad: float) -> None:
    with pytest.raises(ValueError):
        compact({"metadata": {"score": [1, bad]}})


def test_the_words_nan_and_infinity_in_text_are_text() -> None:
    value = {"detail": "NaN is not a number; Infinity is far", "n": 1}
    assert compact(value) == _stdlib(value)


def test_what_json_cannot_hold_raises_type_error_unless_a_fallback_names_it() -> None:
    with pytest.raises(TypeError):
        compact({"x": object()})
    with pytest.raises(TypeError):
        compact({"x": b"\xff"})  # bytes that are not UTF-8: the standard library decides
    assert compact({"x": {1, 2}}, fallback=str) in (b'{"x":[1,2]}', b'{"x":"{1, 2}"}')


def _walk(data: Any) -> str | None:
    """The limits as first written: every value stacked (the reference)."""
    stack = [(data, 1)]
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


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth - 1):
        value = [value] if i % 2 else {"k": value}
    return value


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3)
                    | st.floats(), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=20))
def test_the_limits_find_a_problem_where_the_plain_walk_does(value: Any) -> None:
    assert (problem(value) is None) == (_walk(value) is None)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 5000])
def test_depth_at_and_over_the_limit(depth: int) -> None:
    for leaf in (1, "x", [], {}):
        value = _nested(depth, leaf)
        assert problem(value) == _walk(value)


def test_a_number_out_of_range_anywhere() -> None:
    assert problem(math.inf) == "not_finite"
    assert problem({"a": [1, {"b": -math.inf}]}) == "not_finite"
    assert problem({"a": [1, {"b": 1.5}], "c": "NaN"}) is None

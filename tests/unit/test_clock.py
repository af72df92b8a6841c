"""suppression.clock writes what datetime writes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from suppression.clock import iso_ms, now_iso


def _datetime(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_same_text_as_datetime(t: float) -> None:
    assert iso_ms(t) == _datetime(t)


def test_edges_of_a_second_and_the_same_second_twice() -> None:
    for t in (0.0, 1_765_143_961.0, 1_765_143_961.0004999, 1_765_143_961.9995,
              1_765_143_961.9999996, 1_765_143_962.5, 1_765_143_961.123):
        assert iso_ms(t) == _datetime(t)
        assert iso_ms(t) == _datetime(t)  # from the kept second


def test_now() -> None:
    before = time.time()
    text = now_iso()
    after = time.time()
    assert _datetime(before)[:19] <= text[:19] <= _datetime(after)[:19]
    assert text.endswith("Z") and len(text) == 24


def test_before_the_epoch() -> None:
    for t in (-0.0005, -1.25, -86_400.999):
        assert iso_ms(t) == _datetime(t)

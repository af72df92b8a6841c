"""Timestamps as Outbox writes them: RFC 3339 UTC with milliseconds and ``Z``
(``2026-12-07T21:46:01.123Z``), for status events and log lines, a few a job.

:func:`iso_ms` writes what ``datetime.fromtimestamp(t, UTC).isoformat(timespec=
"milliseconds")`` does, with ``+00:00`` as ``Z``, keeping the formatted second: a third of
its cost when many fall in the same second (tests/unit/test_clock.py compares the two)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

_second: tuple[int, str] = (-1, "")


def iso_ms(t: float) -> str:
    """``t`` (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    global _second
    if t < 0:  # before the epoch: rare, left to datetime
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
    fraction, whole = math.modf(t)
    micros = round(fraction * 1e6)  # as datetime.fromtimestamp rounds
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{micros // 1000:03d}Z"


def now_iso() -> str:
    """Now, as :func:`iso_ms` writes it."""
    return iso_ms(time.time())

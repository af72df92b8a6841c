"""The per-sender rate of the Twilio channel (``RateLimiter``) holds however many jobs wait
at once: it once gave every concurrent waiter the same one-interval wait, so 64 jobs in flight
sent at 64 times the configured rate (seen in ``benchmarks.latency``'s SMS runs)."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from sender.channels.twilio import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_waiters_are_spaced_one_interval_apart_after_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 5, clock=clock)
    waits = [limiter.reserve("+15005550006") for _ in range(25)]  # all at the same instant
    assert waits[:5] == [0.0] * 5
    assert [round(w, 6) for w in waits[5:]] == [round(0.1 * k, 6) for k in range(1, 21)]
    assert limiter.reserve("+85260000000") == 0.0  # another sender has its own rate


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
       st.floats(min_value=0.5, max_value=50), st.integers(min_value=1, max_value=20))
def test_no_window_sees_more_than_the_burst_plus_the_rate(gaps: list[float], rate: float,
                                                          burst: int) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock=clock)
    sends = []
    for gap in gaps:
        clock.now += gap
        sends.append(clock.now + limiter.reserve("s"))
    sends.sort()
    for i, start in enumerate(sends):  # any window [start, start + w] holds <= burst + rate*w
        for j in range(i, len(sends)):
            width = sends[j] - start
            assert j - i + 1 <= burst + rate * width + 1e-6


def test_a_429_halves_the_rate_and_spends_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 10, clock=clock)
    limiter.slow_down("s")
    assert limiter.rate("s") == 5.0
    assert abs(limiter.reserve("s") - 0.2) < 1e-9  # no burst left: one interval at 5/s
    for _ in range(20):
        limiter.speed_up("s")
    assert limiter.rate("s") == 10.0


async def test_acquire_waits_in_real_time() -> None:
    limiter = RateLimiter(50.0, 1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(limiter.acquire("s") for _ in range(6)))
    assert loop.time() - start >= 5 * 0.02 - 0.005  # five intervals after the first


def test_a_storm_of_429s_does_not_pile_up_waits() -> None:
    """Each 429 spends the burst from now; it does not add a burst's time to the reservations
    already made (seven 429s in a row once pushed the next send minutes away)."""
    clock = Clock()
    limiter = RateLimiter(50.0, 50, clock=clock)
    for _ in range(30):
        limiter.reserve("s")
    for _ in range(7):
        limiter.slow_down("s")
    assert limiter.rate("s") == 0.5
    assert limiter.reserve("s") <= 2.0 + 1e-9  # one interval at the floor rate, no more

"""The per-sender rate of the Twilio channel (``RateLimiter``) holds however many jobs wait
at once: it once gave every concurrent waiter the same one-interval wait, so 64 jobs in flight
sent at 64 times the configured rate (seen in ``benchmarks.latency``'s SMS runs). And a storm
of 429s slows it down without locking it at the floor: reservations made at the cut rate
once held 25 retried jobs 2 s apart while the rate was back up (the 429-storm test then took
51 s, and past 90 s on a busy machine)."""

from __future__ import annotations

import asyncio
import heapq

from hypothesis import given
from hypothesis import strategies as st

from sender.channels.twilio import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def simulate(limiter: RateLimiter, clock: Clock, arrivals: list[float],
             sender: str = "s") -> list[float]:
    """Callers arriving at ``arrivals`` (clock times) each ask until they may go, as
    :meth:`RateLimiter.acquire` does; return the times they went, in order."""
    pending = [(t, i) for i, t in enumerate(arrivals)]
    heapq.heapify(pending)
    went = []
    while pending:
        t, i = heapq.heappop(pending)
        clock.now = max(clock.now, t)
        wait = limiter.try_take(sender)
        if wait:
            heapq.heappush(pending, (clock.now + wait, i))
        else:
            went.append(clock.now)
    return went


def test_concurrent_waiters_are_spaced_one_interval_apart_after_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 5, clock=clock)
    went = simulate(limiter, clock, [clock.now] * 25)  # all at the same instant
    offsets = [round(t - 1000.0, 6) for t in went]
    assert offsets[:5] == [0.0] * 5
    assert offsets[5:] == [round(0.1 * k, 6) for k in range(1, 21)]
    assert limiter.try_take("+85260000000") == 0.0  # another sender has its own rate


def test_a_refused_caller_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 1, clock=clock)
    assert limiter.try_take("s") == 0.0
    waits = [limiter.try_take("s") for _ in range(5)]  # asking again does not push the slot
    assert all(abs(w - 0.1) < 1e-9 for w in waits)


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
       st.floats(min_value=0.5, max_value=50), st.integers(min_value=1, max_value=20))
def test_no_window_sees_more_than_the_burst_plus_the_rate(gaps: list[float], rate: float,
                                                          burst: int) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock=clock)
    arrivals, t = [], clock.now
    for gap in gaps:
        t += gap
        arrivals.append(t)
    sends = sorted(simulate(limiter, clock, arrivals))
    assert len(sends) == len(arrivals)
    for i, start in enumerate(sends):  # any window [start, start + w] holds <= burst + rate*w
        for j in range(i, len(sends)):
            width = sends[j] - start
            assert j - i + 1 <= burst + rate * width + 1e-6


def test_a_429_halves_the_rate_and_spends_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 10, clock=clock)
    limiter.slow_down("s")
    assert limiter.rate("s") == 5.0
    assert abs(limiter.try_take("s") - 0.2) < 1e-9  # no burst left: one interval at 5/s
    for _ in range(20):
        limiter.speed_up("s")
    assert limiter.rate("s") == 10.0


async def test_acquire_waits_in_real_time() -> None:
    limiter = RateLimiter(50.0, 1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(limiter.acquire("s") for _ in range(6)))
    assert loop.time() - start >= 5 * 0.02 - 0.005  # five intervals after the first


def test_the_429s_of_one_volley_cut_the_rate_once() -> None:
    """Thirty messages went at once and 25 came back 429: that is one signal, one halving
    (the old limiter cut seven times, to the floor, and stayed near it)."""
    clock = Clock()
    limiter = RateLimiter(50.0, 50, clock=clock)
    sent = [clock.now] * 30
    for _ in sent:
        assert limiter.try_take("s") == 0.0
    clock.now += 0.05
    for t in sent[5:]:
        limiter.slow_down("s", t)
    assert limiter.rate("s") == 25.0
    assert abs(limiter.try_take("s") - 0.04) < 1e-9  # one interval at the new rate, no more
    clock.now += 0.04
    assert limiter.try_take("s") == 0.0
    limiter.slow_down("s", clock.now)  # a message sent after the cut: a new signal
    assert limiter.rate("s") == 12.5


def test_a_recovering_rate_speeds_up_the_callers_already_waiting() -> None:
    clock = Clock()
    limiter = RateLimiter(50.0, 1, floor=0.5, clock=clock)
    for _ in range(7):
        limiter.slow_down("s")
    assert limiter.rate("s") == 0.5
    for _ in range(20):
        limiter.speed_up("s")  # accepted messages bring the rate back
    start = clock.now
    went = simulate(limiter, clock, [start] * 20)
    # the first waits out the interval set at the floor; the others go at the recovered rate
    assert 2.0 - 1e-6 <= went[0] - start and went[-1] - start <= 2.0 + 19 / 50 + 1e-6

"""Micro-batching of Redis round trips (suppression.coalesce) on the test Redis: shared
writes, per-call replies and errors, cancelled callers not sent, failures seen by all."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from suppression.coalesce import Coalescer
from suppression.gate import Counts, Gate
from suppression.history import job_story
from suppression.reputation import Policy
from suppression.roundtrip import execute

pytestmark = pytest.mark.asyncio


async def test_concurrent_calls_share_writes_and_each_gets_its_own_replies(redis: Redis
                                                                          ) -> None:
    sends: list[int] = []

    async def counted(commands: list[tuple[object, ...]]) -> list[object]:
        sends.append(len(commands))
        return await execute(redis, commands)

    coalescer = Coalescer(counted, wait=0.05, max_calls=1000)

    async def call(i: int) -> list[object]:
        return await coalescer([("SET", f"k{i}", i), ("INCRBY", f"k{i}", i)])

    replies = await asyncio.gather(*(call(i) for i in range(100)))
    assert [r[1] for r in replies] == [2 * i for i in range(100)]
    assert all(r[0] in (True, b"OK") for r in replies)
    assert len(sends) < 100 and sum(sends) == 200
    assert coalescer.calls == 100 and coalescer.round_trips == len(sends)


async def test_an_error_reply_goes_to_its_own_call_only(redis: Redis) -> None:
    await redis.set("plain", "x")
    coalescer = Coalescer(partial(execute, redis), wait=0.05)
    good, bad, other = await asyncio.gather(
        coalescer([("SET", "a", 1)]), coalescer([("HGET", "plain", "f")]),
        coalescer([("GET", "a")]))
    assert isinstance(bad[0], ResponseError) and "WRONGTYPE" in str(bad[0])
    assert good[0] in (True, b"OK") and other == [b"1"]
    assert coalescer.round_trips == 1


async def test_a_cancelled_call_is_not_sent(redis: Redis) -> None:
    coalescer = Coalescer(partial(execute, redis), wait=0.2)
    cancelled = asyncio.ensure_future(coalescer([("SET", "never", 1)]))
    kept = asyncio.ensure_future(coalescer([("SET", "kept", 1)]))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await kept
    assert await redis.exists("never") == 0 and await redis.exists("kept") == 1


async def test_a_failed_round_trip_is_raised_to_every_call_of_the_batch() -> None:
    down = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens
    coalescer = Coalescer(partial(execute, down), wait=0.05)
    results = await asyncio.gather(*(coalescer([("PING",)]) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, (RedisConnectionError, OSError)) for r in results)
    await down.aclose()


async def test_at_low_load_a_call_does_not_wait_for_the_window(redis: Redis) -> None:
    """Calls 0.4 s apart against a 0.3 s window: once the rate is known to promise no
    batch-mate, a call leaves at once instead of waiting the window out."""
    coalescer = Coalescer(partial(execute, redis), wait=0.3)
    took = []
    for _ in range(6):
        started = time.monotonic()
        assert await coalescer([("PING",)]) == [b"PONG"]
        took.append(time.monotonic() - started)
        await asyncio.sleep(0.4)
    assert took[0] >= 0.29  # the first calls wait: a worker starts with a prefetch burst
    assert took[-1] < 0.2


async def test_a_full_batch_leaves_without_waiting(redis: Redis) -> None:
    coalescer = Coalescer(partial(execute, redis), wait=5.0, max_calls=10)
    started = time.monotonic()
    await asyncio.gather(*(coalescer([("PING",)]) for _ in range(10)))
    assert time.monotonic() - started < 2.0 and coalescer.round_trips == 1


async def test_a_retried_call_finds_its_own_claim_and_a_repeat_counts_once(redis: Redis
                                                                           ) -> None:
    """A batch that ran but whose reply was lost (the caller timed out) is retried: the
    pre-send finds the claim of the same owner (the same delivery) and goes on, where another
    delivery's is a duplicate; the post-send written again at the same attempt counts once."""
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))

    async def pre(owner: str) -> str:
        decision = await gate.pre_send("acct", "job-r", owner=owner, redelivered=False,
                                       expired=False, attempt=1, address="r@example.com")
        return decision.verdict

    assert await pre("w#1") == "send"
    assert await pre("w#1") == "send"  # the same delivery again
    assert await pre("w#2") == "duplicate"  # another delivery of the same id
    for _ in range(2):
        recorded = await gate.post_send("acct", "job-r", status="sent", attempt=1,
                                        counts=Counts(sends=1))
        assert recorded.applied == 1
    reputation = await redis.hgetall("outbox:{acct:acct}:rep:email")
    assert sum(int(v) for k, v in reputation.items() if k.startswith(b"s:")) == 1
    story = await job_story(redis, "acct", "job-r")
    assert story is not None
    assert [e["status"] for e in story["timeline"]] == ["sent"]
    assert await pre("w#3") == "done"


async def test_gate_decisions_are_the_same_batched(redis: Redis) -> None:
    """60 pre-sends at once through one coalescer, ten of them duplicates of others: each
    job is claimed exactly once, exactly as one round trip per call decides."""
    coalescer = Coalescer(partial(execute, redis), wait=0.05)
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000),
                send=coalescer)

    async def pre(i: int) -> str:
        decision = await gate.pre_send(f"acct{i % 50 % 7}", f"job{i % 50}", owner=f"w#{i}",
                                       redelivered=False, expired=False, attempt=1,
                                       address=f"r{i % 50}@example.com")
        return decision.verdict

    verdicts = await asyncio.gather(*(pre(i) for i in range(60)))
    assert verdicts.count("send") == 50  # one claim per distinct job
    assert sorted(set(verdicts)) == ["duplicate", "send"]
    assert coalescer.round_trips < 60


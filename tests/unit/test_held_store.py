"""The held jobs' Redis side (suppression/held.py: hold.lua, held_take.lua) on a real Redis and
on a Redis Cluster (``backends``): held again is one job, the cap by jobs and by bytes, an
unblock in between answers ``again``, a take only of the job as it was read, per category."""

from __future__ import annotations

import asyncio
from typing import get_args

import pytest

from sender.models import Category
from suppression import keys
from suppression.held import CATEGORIES, HeldStore

pytestmark = pytest.mark.backends


def test_the_categories_are_the_jobs() -> None:
    from outbox.support import HELD_ACTIONS
    from sender.held import ACTIONS

    assert sorted(CATEGORIES) == sorted(get_args(Category))
    assert HELD_ACTIONS == ACTIONS


@pytest.fixture
def account(names) -> str:
    return str(names.account("acct_hs"))


def store(redis, **limits: int) -> HeldStore:
    return HeldStore(redis, hold_seconds=60, max_jobs=limits.get("jobs", 10),
                     max_bytes=limits.get("bytes", 10_000), idempotency_ttl=3600)


async def hold(s: HeldStore, account: str, job: str, category: str = "transactional",
               body: bytes = b'{"x":1}'):
    return await s.hold(account, job, channel="email", category=category, body=body,
                        attempt=1)


async def test_held_once_capped_and_again_after_an_unblock(redis, account) -> None:
    s = store(redis, jobs=2, bytes=100)
    assert (await hold(s, account, "j1")).outcome == "again"  # active: nothing held
    await redis.hset(keys.state(account), "state", "blocked")
    first = await hold(s, account, "j1")
    assert (first.outcome, first.reason) == ("held", "account_blocked")
    assert first.until_ms - first.since_ms == 60_000
    again = await hold(s, account, "j1", body=b'{"x":22}')  # the same id: one job, new body
    assert (again.outcome, again.since_ms) == ("held", first.since_ms)
    assert await s.bodies(account, ["j1", "nope"]) == [b'{"x":22}', None]
    assert (await hold(s, account, "j2", "marketing", body=b"x" * 93)).outcome == "full"
    assert (await hold(s, account, "j2", "marketing", body=b"x" * 92)).outcome == "held"
    full = await hold(s, account, "j3")
    assert (full.outcome, full.jobs, full.bytes) == ("full", 2, 100)
    summary = await s.summary(account)
    assert (summary["held"], summary["bytes"]) == (2, 100)
    assert {(g["category"], g["jobs"]) for g in summary["by"]} == {("transactional", 1),
                                                                 ("marketing", 1)}
    assert account in await s.accounts()


async def test_a_take_is_of_the_job_as_read(redis, account) -> None:
    s = store(redis)
    await redis.hset(keys.state(account), "state", "suspended")
    await hold(s, account, "t1")
    await hold(s, account, "m1", "marketing")
    [marketing] = await s.listing(account, category="marketing")
    [stale] = await s.listing(account, category="transactional")
    assert marketing.job_id == "m1"
    await redis.zadd(keys.held(account, "email", "transactional"), {"t1": stale.since_ms + 5})
    assert await s.take([stale, marketing], status="blocked", entry="blocked",
                        reason="held_discarded", detail="alice: stale") == [False, True]
    assert await s.take([marketing], status="blocked", entry="blocked",
                        reason="held_discarded", detail="again") == [False]
    job = await redis.hgetall(keys.job(account, "m1"))
    assert {k.decode(): v.decode() for k, v in job.items()}["st"] == "blocked"
    assert await s.total(account) == 1
    await s.forget_if_empty(account)
    assert account in await s.accounts()  # t1 is still held
    [t1] = await s.listing(account)
    await s.take([t1], status="", entry="released", reason="released", detail="bob: ok")
    assert (await redis.hget(keys.job(account, "t1"), "st")) == b"held"  # not final
    await s.forget_if_empty(account)
    assert account not in await s.accounts()
    summary = await s.summary(account)
    assert (summary["held"], summary["bytes"], summary["oldest"]) == (0, 0, None)


async def test_a_job_held_again_while_its_release_runs_stays_held(redis, account) -> None:
    """The release marks, publishes, then takes; the account blocked again in between holds
    the published copy anew (a new time), so the take leaves it: never lost."""
    s = store(redis)
    await redis.hset(keys.state(account), "state", "blocked")
    await hold(s, account, "r1")
    [read] = await s.listing(account)
    assert await s.mark_released([read]) == [b'{"x":1}']
    await asyncio.sleep(0.01)  # a later millisecond on Redis's clock
    again = await hold(s, account, "r1")  # the released copy, the account blocked again
    assert again.since_ms > read.since_ms and await s.total(account) == 1
    assert await s.take([read], status="", entry="released", reason="released",
                        detail="alice: ok") == [False]
    [still] = await s.listing(account)
    assert (still.job_id, still.since_ms) == ("r1", again.since_ms)
    assert await redis.hget(keys.job(account, "r1"), "rl") is None
    assert await s.take([still], status="", entry="released", reason="released",
                        detail="alice: ok") == [True]

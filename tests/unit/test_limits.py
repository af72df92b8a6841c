"""Frequency caps and the daily quota over the real pre-send Lua and a real Redis (single and
Cluster, ``backends``): the cap counts a recipient's jobs of one category and channel over a
rolling period, the quota an account's claims in its day; both refuse with a final status
(``capped``, ``over_quota``) that a redelivery answers ``done``, and neither counts a job
twice nor a job refused."""

from __future__ import annotations

import time

import pytest

from suppression import history, keys
from suppression.gate import Gate
from suppression.reputation import Policy
from suppression.store import AccountStore, ConsentStore, quota_day

pytestmark = pytest.mark.backends
_n = iter(range(10**9))
WEEK = 7 * 86400


def _gate(redis, **policy) -> Gate:
    return Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000, **policy))


async def _pre(gate, account, job_id=None, *, redelivered=False, **job):
    return await gate.pre_send(account, job_id or f"j{next(_n)}", owner=f"w#{next(_n)}",
                               redelivered=redelivered, expired=False, attempt=1, **job)


async def _marketing_sms(redis, account, number):
    await AccountStore(redis, Policy()).configure(account, actor="test", business_name="Acme",
                                        contact_phone="+852 2123 4567")
    await ConsentStore(redis).grant(account, number, channel="sms", source="form")


async def test_the_cap_refuses_the_third_marketing_sms_of_the_week(redis, names):
    account, number = names.account("acct_cap"), names.phone(0)
    await _marketing_sms(redis, account, number)
    await AccountStore(redis, Policy()).configure(account, actor="test", cap_marketing_sms=2)
    gate = _gate(redis)
    sms = dict(channel="sms", category="marketing", address=number)
    first, second = await _pre(gate, account, "m1", **sms), await _pre(gate, account, "m2", **sms)
    third = await _pre(gate, account, "m3", **sms)
    assert (first.verdict, second.verdict) == ("send", "send")
    assert (third.verdict, third.status, third.reason) == ("capped", "capped", "frequency_cap")
    job = await gate.job_state(account, "m3")
    assert (job["st"], job["r"]) == ("capped", "frequency_cap")
    story = await history.job_story(redis, account, "m3")
    assert story is not None
    [entry] = story["timeline"]
    assert (entry["status"], entry["detail"]) == \
        ("capped", "2 marketing sms to this recipient in 604800 s")
    # a redelivery of the capped job answers done; the claimed ones are not counted twice
    again = await _pre(gate, account, "m3", redelivered=True, **sms)
    assert (again.verdict, again.status) == ("done", "capped")
    counter = keys.frequency(account, "marketing", "sms", number)
    assert await redis.zcard(counter) == 2
    assert 0 < await redis.pttl(counter) <= WEEK * 1000
    # another recipient, a notification or an e-mail to the same person: not capped
    assert (await _pre(gate, account, **{**sms, "address": names.phone(1)})).verdict == \
        "no_consent"  # (no consent for that one: refused before the cap, not counted)
    assert (await _pre(gate, account, channel="sms", category="notification",
                       address=number)).verdict == "send"
    assert (await _pre(gate, account, channel="sms", category="transactional",
                       address=number)).verdict == "send"


async def test_a_send_older_than_the_period_no_longer_counts(redis, names):
    """The period is rolling, on Redis's clock: a claim recorded 8 days ago has left the
    week (the counter's member scored then, as the script itself would have written it)."""
    account, number = names.account("acct_cap_old"), names.phone(1)
    await _marketing_sms(redis, account, number)
    await AccountStore(redis, Policy()).configure(account, actor="test", cap_marketing_sms=2)
    gate = _gate(redis)
    counter = keys.frequency(account, "marketing", "sms", number)
    now_ms = int(time.time() * 1000)
    await redis.zadd(counter, {"old-1": now_ms - 8 * 86400 * 1000,
                               "recent-1": now_ms - 6 * 86400 * 1000})
    sms = dict(channel="sms", category="marketing", address=number)
    assert (await _pre(gate, account, "n1", **sms)).verdict == "send"  # old-1 gone, 2 now
    assert (await _pre(gate, account, "n2", **sms)).verdict == "capped"
    assert set(await redis.zrange(counter, 0, -1)) == {b"recent-1", b"n1"}


async def test_no_cap_by_default_and_a_refused_job_is_not_counted(redis, names):
    account, address = names.account("acct_nocap"), names.email("ann@example.com")
    gate = _gate(redis, cap_notification_email=1)
    mail = dict(channel="email", category="notification", address=address)
    await redis.hset(keys.state(account), "state", "blocked")
    assert (await _pre(gate, account, **mail)).verdict == "blocked"
    await redis.hset(keys.state(account), "state", "active")
    assert (await _pre(gate, account, **mail)).verdict == "send"  # the refused one not counted
    assert (await _pre(gate, account, **mail)).verdict == "capped"  # the setting's default
    for _ in range(3):  # marketing has no cap by default
        await AccountStore(redis, Policy()).configure(account, actor="t", business_name="Acme",
                                            address="HK", consent_mode="opt_out")
        assert (await _pre(gate, account, channel="email", category="marketing",
                           address=address)).verdict == "send"


async def test_the_daily_quota_refuses_over_it_and_counts_claims_once(redis, names):
    account = names.account("acct_quota")
    await AccountStore(redis, Policy()).configure(account, actor="test", daily_quota=2)
    gate = _gate(redis)
    first = await _pre(gate, account, "q1", address=names.email("a@example.com"))
    # the same job again (its reply lost, a crash): counted once
    again = await _pre(gate, account, "q1", redelivered=True,
                       address=names.email("a@example.com"))
    second = await _pre(gate, account, "q2", channel="sms", address=names.phone(2))
    third = await _pre(gate, account, "q3", address=names.email("c@example.com"))
    assert [d.verdict for d in (first, again, second)] == ["send", "send", "send"]
    assert (third.verdict, third.status, third.reason) == \
        ("over_quota", "over_quota", "daily_quota")
    quota = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.quota(account))).items()}
    now = int((await redis.time())[0])
    assert quota == {"day": str(quota_day(now, 28800)), "n": "2"}
    shown = await AccountStore(redis, Policy()).show(account)
    assert (shown["limits"]["daily_quota"], shown["limits"]["quota_used_today"]) == (2, 2)


async def test_yesterdays_count_does_not_hold_today(redis, names):
    account = names.account("acct_quota_day")
    await AccountStore(redis, Policy()).configure(account, actor="test", daily_quota=1)
    now = int((await redis.time())[0])
    await redis.hset(keys.quota(account), mapping={"day": quota_day(now, 28800) - 1, "n": 5})
    gate = _gate(redis)
    assert (await _pre(gate, account, address=names.email("a@example.com"))).verdict == "send"
    assert (await _pre(gate, account, address=names.email("b@example.com"))).verdict == \
        "over_quota"


def test_the_quota_day_starts_at_midnight_in_hong_kong():
    # 2026-12-07 15:59:59 UTC is 23:59:59 in Hong Kong; a second later the next day there
    before = 1796659199
    assert quota_day(before + 1, 28800) == quota_day(before, 28800) + 1
    assert quota_day(before + 1, 0) == quota_day(before, 0)

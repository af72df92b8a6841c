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
    assert (await _pre(gate, account, **mail)).verdict == "held"  # not claimed, not counted
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


async def _local_minute(redis, offset: int) -> int:
    return (int((await redis.time())[0]) + offset) % 86400 // 60


async def test_quiet_hours_drop_marketing_in_the_recipients_window(redis, names):
    """The window is set around the present minute of the recipient's time (Redis's clock):
    a marketing SMS to a Hong Kong number is dropped; a transactional one, a notification
    (not switched on) and one whose recipient is in New York (the job's ``timezone``) go."""
    account, number = names.account("acct_quiet"), names.phone(0)
    await _marketing_sms(redis, account, number)
    now = await _local_minute(redis, 8 * 3600)
    await AccountStore(redis, Policy()).configure(
        account, actor="test", quiet_marketing_sms="drop",
        quiet_start=(now - 60) % 1440, quiet_end=(now + 60) % 1440)
    gate = _gate(redis)
    sms = dict(channel="sms", address=number)
    dropped = await _pre(gate, account, "quiet-1", category="marketing", **sms)
    assert (dropped.verdict, dropped.status, dropped.reason) == \
        ("quiet_hours", "quiet_hours", "quiet_hours")
    assert dropped.detail is not None
    assert dropped.detail.startswith(f"{now // 60:02d}:{now % 60:02d} in the recipient's time")
    assert (await _pre(gate, account, category="transactional", **sms)).verdict == "send"
    assert (await _pre(gate, account, category="notification", topic="t", **sms)).verdict == \
        "send"
    new_york = await _pre(gate, account, category="marketing", timezone="America/New_York",
                          **sms)
    assert new_york.verdict == "send"  # 12 or 13 hours from Hong Kong: outside the window
    again = await _pre(gate, account, "quiet-1", redelivered=True, category="marketing", **sms)
    assert (again.verdict, again.status) == ("done", "quiet_hours")


async def test_the_window_may_wrap_midnight_and_is_off_by_default(redis, names):
    account, address = names.account("acct_quiet_wrap"), names.email("ann@example.com")
    now = await _local_minute(redis, 8 * 3600)
    mail = dict(channel="email", category="notification", topic="t", address=address)
    # all day but [now-5, now-2): wraps midnight (start after end), and holds the present
    around = dict(quiet_start=(now - 2) % 1440, quiet_end=(now - 5) % 1440)
    assert (await _pre(_gate(redis, **around), account, **mail)).verdict == "send"  # not set
    drop = _gate(redis, quiet_notification_email="drop", **around)
    assert (await _pre(drop, account, **mail)).verdict == "quiet_hours"
    later = _gate(redis, quiet_notification_email="drop", quiet_start=(now + 5) % 1440,
                  quiet_end=(now + 10) % 1440)
    assert (await _pre(later, account, **mail)).verdict == "send"
    empty = _gate(redis, quiet_notification_email="drop", quiet_start=now, quiet_end=now)
    assert (await _pre(empty, account, **mail)).verdict == "send"  # start = end: no window


def test_the_recipients_time_zone():
    from datetime import UTC, datetime

    from suppression.gate import local_offset

    winter = datetime(2026, 1, 15, 12, tzinfo=UTC)
    assert local_offset(None, "sms", "+85291234567", now=winter) == 8 * 3600
    assert local_offset(None, "sms", "+14155550100", now=winter) == -8 * 3600
    assert local_offset(None, "sms", "+81312345678", now=winter) == 9 * 3600
    # a country of several zones (the UK's numbers: London, Jersey...): the default
    assert local_offset(None, "sms", "+447700900123", now=winter) == 8 * 3600
    assert local_offset("Asia/Tokyo", "sms", "+14155550100", now=winter) == \
        9 * 3600  # the job's field wins
    assert local_offset(None, "email", "a@example.com", now=winter) == 8 * 3600


# -- the waiting modes: quiet hours, a cap or the quota make a job wait (st 'W') until a
#    due time the script computes on Redis's clock; the pipeline puts it in the schedule


async def _redis_ms(redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_quiet_hours_in_wait_mode_keep_the_job_until_the_windows_end(redis, names):
    account, number = names.account("acct_quiet_wait"), names.phone(0)
    await _marketing_sms(redis, account, number)
    now = await _local_minute(redis, 8 * 3600)
    end = (now + 2) % 1440
    await AccountStore(redis, Policy()).configure(
        account, actor="test", quiet_marketing_sms="wait", quiet_start=(now - 60) % 1440,
        quiet_end=end)
    gate = _gate(redis)
    sms = dict(channel="sms", category="marketing", address=number)
    before = await _redis_ms(redis)
    waits = await _pre(gate, account, "qw-1", **sms)
    assert (waits.verdict, waits.status, waits.reason) == ("wait", "W", "quiet_hours")
    assert waits.detail is not None and waits.detail.endswith(
        f"waits until {end // 60:02d}:{end % 60:02d}")
    # due at the window's end, the recipient's time (Hong Kong, the number's country)
    assert waits.due_ms % 1000 == 0 and (waits.due_ms // 1000 + 8 * 3600) % 86400 == end * 60
    assert 60_000 <= waits.due_ms - before <= 180_000 and waits.wait_ms > 0
    job = await gate.job_state(account, "qw-1")
    assert (job["st"], job["sa"]) == ("W", str(waits.due_ms))
    assert "o" not in job  # not claimed: nothing counted, no token taken
    # released while still inside (a clock a little behind): it waits again, same due
    again = await _pre(gate, account, "qw-1", redelivered=True, **sms)
    assert (again.verdict, again.due_ms) == ("wait", waits.due_ms)
    # the window over (moved, as the clock would have): the same job is claimed and sent,
    # its wait on the timeline
    await AccountStore(redis, Policy()).configure(account, actor="test",
                                                  quiet_end=now, quiet_start=(now + 5) % 1440)
    sent = await _pre(gate, account, "qw-1", redelivered=True, **sms)
    assert sent.verdict == "send"
    story = await history.job_story(redis, account, "qw-1")
    assert story is not None
    assert [e["status"] for e in story["timeline"]] == ["scheduled", "scheduled"]
    assert "quiet from" in story["timeline"][0]["detail"]
    # transactional messages never wait
    assert (await _pre(gate, account, category="transactional", channel="sms",
                       address=number)).verdict == "send"


async def test_a_cap_in_wait_mode_waits_for_a_place(redis, names):
    account, number = names.account("acct_cap_wait"), names.phone(3)
    await _marketing_sms(redis, account, number)
    await AccountStore(redis, Policy()).configure(account, actor="test", cap_marketing_sms=2,
                                                  cap_mode="wait")
    counter = keys.frequency(account, "marketing", "sms", number)
    now = await _redis_ms(redis)
    # two sends this week: the older leaves the period in 3 s, the newer in 5 days
    await redis.zadd(counter, {"old": now - WEEK * 1000 + 3000, "new": now - 2 * 86400_000})
    gate = _gate(redis)
    sms = dict(channel="sms", category="marketing", address=number)
    waits = await _pre(gate, account, "cw-1", **sms)
    assert (waits.verdict, waits.reason) == ("wait", "frequency_cap")
    assert waits.due_ms == now - WEEK * 1000 + 3000 + WEEK * 1000 + 1
    assert waits.detail == "2 marketing sms to this recipient in 604800 s: waits for a place"
    assert await redis.zscore(counter, "cw-1") is None  # not counted while it waits
    await redis.zrem(counter, "old")  # the period moved on past it
    assert (await _pre(gate, account, "cw-1", redelivered=True, **sms)).verdict == "send"
    assert await redis.zscore(counter, "cw-1") is not None


async def test_the_quota_in_wait_mode_waits_for_the_next_day_and_counts_once(redis, names):
    account = names.account("acct_quota_wait")
    await AccountStore(redis, Policy()).configure(account, actor="test", daily_quota=1,
                                                  quota_mode="wait")
    gate = _gate(redis)
    mail = dict(channel="email", category="notification", topic="t")
    assert (await _pre(gate, account, address=names.email("a@example.com"), **mail)).verdict \
        == "send"
    waits = await _pre(gate, account, "qq-1", address=names.email("b@example.com"), **mail)
    assert (waits.verdict, waits.reason) == ("wait", "daily_quota")
    assert (waits.due_ms // 1000 + 28800) % 86400 == 0 and waits.due_ms % 1000 == 0
    assert 0 < waits.due_ms - await _redis_ms(redis) <= 86400_000
    # a receipt is not kept until tomorrow: it ends over_quota
    receipt = await _pre(gate, account, address=names.email("c@example.com"),
                         category="transactional")
    assert receipt.verdict == "over_quota"
    # the next day (yesterday's count, as the clock would make it): the waiting job goes and
    # is counted, once, though its record said W (a scheduled job once went uncounted)
    now = int((await redis.time())[0])
    await redis.hset(keys.quota(account), mapping={"day": quota_day(now, 28800) - 1, "n": 1})
    assert (await _pre(gate, account, "qq-1", redelivered=True,
                       address=names.email("b@example.com"), **mail)).verdict == "send"
    assert await redis.hget(keys.quota(account), "n") == b"1"
    # claimed again (a crash before its send ended): not counted again
    assert (await _pre(gate, account, "qq-1", redelivered=True,
                       address=names.email("b@example.com"), **mail)).verdict == "send"
    assert await redis.hget(keys.quota(account), "n") == b"1"


async def test_a_topic_cap_counts_that_topic_and_channel_only(redis, names):
    """``topic_caps``: 'reminder:sms=2' caps the recipient's notification SMS of topic
    'reminder' at two per period, beside the category caps; other topics, the e-mail channel
    and transactional jobs are not counted against it."""
    account, number = names.account("acct_tcap"), names.phone(4)
    await AccountStore(redis, Policy()).configure(account, actor="test",
                                                  topic_caps=" reminder:sms=2 ,promo:email=5")
    cfg = await redis.hget(keys.config(account), "topic_caps")
    assert cfg == b"promo:email=5,reminder:sms=2"  # canonical: trimmed and sorted
    gate = _gate(redis)
    reminder = dict(channel="sms", category="notification", topic="reminder", address=number)
    verdicts = [(await _pre(gate, account, f"r{i}", **reminder)).verdict for i in range(3)]
    assert verdicts == ["send", "send", "capped"]
    third = await gate.job_state(account, "r2")
    assert (third["st"], third["r"]) == ("capped", "frequency_cap")
    story = await history.job_story(redis, account, "r2")
    assert story is not None
    assert story["timeline"][-1]["detail"] == "2 reminder sms to this recipient in 604800 s"
    assert (await _pre(gate, account, channel="sms", category="notification", topic="billing",
                       address=number)).verdict == "send"
    assert (await _pre(gate, account, channel="sms", category="transactional",
                       topic="reminder", address=number)).verdict == "send"
    counter = keys.topic_frequency(account, "reminder", "sms", number)
    assert await redis.zcard(counter) == 2
    # in wait mode the third waits for a place instead
    await AccountStore(redis, Policy()).configure(account, actor="test", cap_mode="wait")
    waits = await _pre(gate, account, "r3", **reminder)
    assert (waits.verdict, waits.reason) == ("wait", "frequency_cap")


@pytest.mark.parametrize("value, error", [
    ("reminder:fax=2", "is not 'topic:channel=N'"), ("reminder=2", "is not"),
    ("a b:sms=2", "is not"), ("reminder:sms=0", "at least 1"), ("x:sms=two", "is not")])
async def test_bad_topic_caps_are_refused_and_change_nothing(redis, names, value, error):
    from suppression.entries import BadEntry

    account = names.account("acct_tcap_bad")
    with pytest.raises(BadEntry, match=error):
        await AccountStore(redis, Policy()).configure(account, actor="test", topic_caps=value)
    assert await redis.hget(keys.config(account), "topic_caps") is None

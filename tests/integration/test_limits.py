"""Sending limits through the real services (RabbitMQ, Redis, the worker, the relay or the
Twilio stand-in, the CLI): a frequency cap ends the third marketing SMS of the week
``capped``; a daily quota ends the job over it ``over_quota``; a blast with 10 % unknown users
moves its account to ``warning`` (published, shown, nothing slowed) before ``throttled``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from outbox.devsinks.twilio_api import TwilioStandIn
from sender.client import Outbox
from tests.integration.helpers import (
    cli_runner,
    collect,
    email_job,
    events,
    publish,
    running_app,
    running_worker,
)

pytestmark = pytest.mark.integration
SID, TOKEN, FROM = "AC" + "4" * 32, "limits-token", "+15005550006"
UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown"


@pytest.fixture
async def sms_settings(make_settings, unused_tcp_port):
    api = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=0.02)
    base = await api.start()
    settings = make_settings(twilio_account_sid=SID, twilio_auth_token=TOKEN,
                             twilio_from=FROM, twilio_api_base=base,
                             public_url=f"http://127.0.0.1:{unused_tcp_port}",
                             twilio_rate_per_sender=50.0)
    async with running_app(settings, unused_tcp_port):
        yield settings, api
    await api.close()


async def _final(amqp_url: str, job: dict[str, Any], *, wanted: set[str]) -> dict[str, Any]:
    """Publish one job and return its first status event whose status is in ``wanted``."""
    await publish(amqp_url, [job])
    found: list[dict[str, Any]] = []

    def done(messages: list) -> bool:
        found[:] = [e for e in events(messages)
                    if e["id"] == job["id"] and e["status"] in wanted]
        return bool(found)

    await collect(amqp_url, "outbox.status", done, timeout=30)
    return found[0]


def _sms(job_id: str, to: str, category: str = "marketing") -> dict[str, Any]:
    topic = {"topic": "appointment"} if category == "notification" else {}
    return {"v": 1, "id": job_id, "account_id": "acct_caps", "channel": "sms",
            "category": category, "to": to, "body": "Spring sale 春季大減價", **topic}


async def test_the_cap_ends_the_third_marketing_sms_of_the_week(sms_settings, amqp_url,
                                                                monkeypatch, redis_url,
                                                                capsys):
    settings, api = sms_settings
    cli = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await cli("accounts", "configure", "acct_caps", "--business-name", "Acme",
                     "--address", "Central, HK", "--contact-phone", "+852 2123 4567",
                     "--cap-marketing-sms", "2") == 0
    with pytest.raises(SystemExit):  # refused by the parser, with the flag named
        await cli("accounts", "configure", "acct_caps", "--cap-marketing-sms", "two")
    for number in ("+85291230001", "+85291230002"):
        assert await cli("consent", "grant", "acct_caps", number, "--channel", "sms") == 0
    final = {"sent", "capped", "no_consent", "suppressed", "rejected", "failed"}
    async with running_worker(settings):
        got = [await _final(amqp_url, _sms(f"week-{i}", "+85291230001"), wanted=final)
               for i in (1, 2, 3)]
        # the cap is per recipient and category: another number, a notification still go
        other = await _final(amqp_url, _sms("week-other", "+85291230002"), wanted=final)
        notice = await _final(amqp_url, _sms("week-notice", "+85291230001", "notification"),
                              wanted=final)
    assert [e["status"] for e in got] == ["sent", "sent", "capped"]
    capped = got[2]
    assert (capped["reason"], capped["channel"], capped["account_id"]) == \
        ("frequency_cap", "sms", "acct_caps")
    assert "2 marketing sms to this recipient in 604800 s" in capped["detail"]
    assert (other["status"], notice["status"]) == ("sent", "sent")
    to_first = [m for m in api.messages if m["to"] == "+85291230001"]
    assert len(to_first) == 3  # week-1, week-2 and the notification; never week-3
    assert not any("week-3" in json.dumps(m) for m in api.messages)

    capsys.readouterr()
    assert await cli("accounts", "show", "acct_caps", "--json") == 0
    limits = json.loads(capsys.readouterr().out)["limits"]
    assert limits["frequency_caps"] == {"caps": {"marketing_sms": 2}, "topics": {},
                                        "period": 604800, "mode": "end"}
    assert await cli("jobs", "show", "acct_caps", "week-3", "--json") == 0
    assert '"capped"' in capsys.readouterr().out


async def test_the_daily_quota_ends_the_job_over_it(make_settings, smtp_server, amqp_url,
                                                    monkeypatch, redis_url, capsys):
    smtp_url, recorder = smtp_server
    cli = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await cli("accounts", "configure", "acct_quota", "--daily-quota", "2") == 0
    assert await cli("accounts", "configure", "acct_quota", "--daily-quota", "-1") == 2
    jobs = [email_job(account_id="acct_quota", to=f"q{i}@example.com") for i in range(3)]
    final = {"sent", "over_quota", "failed", "rejected"}
    async with running_worker(make_settings(smtp_url=smtp_url)):
        got = [await _final(amqp_url, job, wanted=final) for job in jobs]
    assert [e["status"] for e in got] == ["sent", "sent", "over_quota"]
    assert got[2]["reason"] == "daily_quota"
    assert got[2]["detail"].startswith("2 messages a day, all used (day ")
    assert recorder.by_rcpt("q2@example.com") == []
    assert len(recorder.messages) == 2
    capsys.readouterr()
    assert await cli("accounts", "show", "acct_quota", "--json") == 0
    limits = json.loads(capsys.readouterr().out)["limits"]
    assert (limits["daily_quota"], limits["quota_used_today"]) == (2, 2)


async def test_the_warning_is_published_before_the_throttle(make_settings, smtp_server,
                                                            amqp_url, redis_url, monkeypatch,
                                                            capsys):
    """A blast with 10 % unknown users: in warning from about its 50th send (lower bound over
    2 %), nothing slowed; throttled from its 200th (lower bound over 5 %); never blocked."""
    smtp_url, recorder = smtp_server
    jobs = [email_job(account_id="acct_warn", to=f"w{i}@example.com") for i in range(300)]
    for i, job in enumerate(jobs):
        if i % 10 == 3:
            recorder.replies[job["to"]] = UNKNOWN.format(job["to"])
    settings = make_settings(smtp_url=smtp_url, account_rate=100000, account_burst=100000)
    cli = cli_runner(monkeypatch, amqp_url, redis_url)
    account_events: list[dict[str, Any]] = []
    final: dict[str, dict[str, Any]] = {}

    async def settle(n: int) -> None:
        """Collect status events until ``n`` jobs have their final one."""
        read = [0]

        def done(messages: list) -> bool:
            for e in events(messages[read[0]:]):
                (account_events.append(e) if e["id"].startswith("acct_warn:")
                 else final.__setitem__(e["id"], e))
            read[0] = len(messages)
            return len(final) >= n

        await collect(amqp_url, "outbox.status", done, timeout=90)

    async with running_worker(settings):
        async with Outbox(amqp_url) as outbox:  # the first 100: warning, not throttled
            for job in jobs[:100]:
                await outbox.enqueue(job)
        await settle(100)
        capsys.readouterr()
        assert await cli("accounts", "show", "acct_warn", "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        assert await cli("accounts", "list", "--state", "warning", "--json") == 0
        listed = json.loads(capsys.readouterr().out)
        async with Outbox(amqp_url) as outbox:  # the next 200: throttled
            for job in jobs[100:]:
                await outbox.enqueue(job)
        await settle(300)

    first = Counter(final[j["id"]]["status"] for j in jobs[:100])
    assert first == {"sent": 90, "bounced": 10}, "nothing slowed or refused in warning"
    assert shown["state"] == "warning" and shown["state_reason"] == "hard_bounce_rate"
    assert shown["rates"]["email"]["warning"] is True
    assert shown["limits"]["thresholds"]["warning_bounce"] == 0.02
    assert {"account_id": "acct_warn", "state": "warning"} in listed
    assert Counter(e["status"] for e in final.values()) == {"sent": 270, "bounced": 30}

    states = [(e["status"], e["channel"], e["reason"], e["from"]) for e in account_events]
    print(f"\naccount events: {states}", file=sys.__stderr__)
    assert states == [("warning", "email", "hard_bounce_rate", "active"),
                      ("throttled", "email", "hard_bounce_rate", "warning")]
    capsys.readouterr()
    assert await cli("accounts", "show", "acct_warn", "--json") == 0
    transitions = json.loads(capsys.readouterr().out)["recent_transitions"]
    throttle, warning = transitions[0], transitions[1]
    print(f"warning after {warning['sends']} sends ({warning['hard']} hard), throttled after "
          f"{throttle['sends']} ({throttle['hard']} hard)", file=sys.__stderr__)
    assert (warning["to"], throttle["to"]) == ("warning", "throttled")
    assert 50 <= int(warning["sends"]) < 100 <= 200 <= int(throttle["sends"])


async def test_quiet_hours_drop_marketing_sms_through_the_worker(sms_settings, amqp_url,
                                                                 monkeypatch, redis_url):
    """The account drops marketing SMS in its quiet hours, set around the present minute in
    Hong Kong (the number's country): the job ends quiet_hours with its event and never
    reaches Twilio; a transactional SMS at the same moment is sent."""
    import redis.asyncio as aioredis

    settings, api = sms_settings
    client = aioredis.Redis.from_url(redis_url)
    now = (int((await client.time())[0]) + 8 * 3600) % 86400 // 60
    await client.aclose()
    cli = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await cli("accounts", "configure", "acct_caps", "--business-name", "Acme",
                     "--address", "Central, HK", "--contact-phone", "+852 2123 4567",
                     "--quiet-marketing-sms", "drop", "--quiet-start", str((now - 60) % 1440),
                     "--quiet-end", str((now + 60) % 1440)) == 0
    assert await cli("consent", "grant", "acct_caps", "+85291230003", "--channel", "sms") == 0
    final = {"sent", "quiet_hours", "no_consent", "rejected", "failed"}
    async with running_worker(settings):
        quiet = await _final(amqp_url, _sms("night-offer", "+85291230003"), wanted=final)
        receipt = await _final(amqp_url, _sms("night-receipt", "+85291230003",
                                              "transactional"), wanted=final)
    assert (quiet["status"], quiet["reason"]) == ("quiet_hours", "quiet_hours")
    assert "in the recipient's time, quiet from" in quiet["detail"]
    assert receipt["status"] == "sent"
    assert [m["to"] for m in api.messages] == ["+85291230003"]  # the receipt alone


async def test_quiet_hours_wait_holds_a_marketing_sms_until_the_windows_end(
        sms_settings, amqp_url, monkeypatch, redis_url, capsys):
    """The account keeps marketing SMS that fall in its quiet hours (22:00-08:00, the
    default) until the window ends. The clock is the recipient's: their time zone is set so
    that it is 07:59:57 there when the job is read (suppression.gate.local_offset, as a job's
    ``timezone`` field sets it), so the wait is three real seconds, not a night. The job waits
    in the schedule (``jobs show``: scheduled, with why), no Twilio request is made before
    08:00:00 in the recipient's time, and it is sent just after, once."""
    import redis.asyncio as aioredis

    import suppression.gate

    settings, api = sms_settings
    cli = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await cli("accounts", "configure", "acct_caps", "--business-name", "Acme",
                     "--address", "Central, HK", "--contact-phone", "+852 2123 4567",
                     "--quiet-marketing-sms", "wait") == 0
    assert await cli("consent", "grant", "acct_caps", "+85291230004", "--channel", "sms") == 0
    client = aioredis.Redis.from_url(redis_url)

    async def redis_now() -> float:
        seconds, micros = await client.time()
        return int(seconds) + int(micros) / 1e6

    now = await redis_now()
    offset = (8 * 3600 - 3 - int(now)) % 86400  # 07:59:57 in the recipient's time
    window_end = int(now) + 3  # epoch seconds of 08:00:00 there
    monkeypatch.setattr(suppression.gate, "local_offset", lambda *a, **k: offset)
    job_key = "outbox:{acct:acct_caps}:job:dawn-offer"
    try:
        async with running_worker(settings):
            await publish(amqp_url, [_sms("dawn-offer", "+85291230004")])
            async with asyncio.timeout(10):
                while await client.hget(job_key, "st") != b"W":
                    await asyncio.sleep(0.02)
            capsys.readouterr()
            assert await cli("jobs", "show", "acct_caps", "dawn-offer", "--json") == 0
            story = json.loads(capsys.readouterr().out)
            assert story["status"] == "scheduled"
            assert datetime.fromisoformat(story["due"]).timestamp() == window_end
            assert "quiet from 22:00 to 08:00: waits until 08:00" in \
                story["timeline"][-1]["detail"]
            async with asyncio.timeout(20):  # watched: nothing reaches Twilio before 08:00
                while True:
                    polled = await redis_now()  # read before looking
                    if api.messages:
                        created_by = await redis_now()
                        break
                    still_nothing_at = polled
                    await asyncio.sleep(0.02)
            got = await collect(amqp_url, "outbox.status",
                                lambda m: any(e["status"] == "sent" for e in events(m)))
    finally:
        await client.aclose()
    print(f"nothing sent at {still_nothing_at - window_end:+.3f} s from the window's end, "
          f"sent by {created_by - window_end:+.3f} s", file=sys.__stderr__)
    assert still_nothing_at >= window_end - 0.1  # watched until the end: nothing went early
    assert created_by < window_end + 1.5  # and it went when the window ended
    assert [e["status"] for e in events(got) if e["id"] == "dawn-offer"][-1] == "sent"
    assert [m["to"] for m in api.messages] == ["+85291230004"]  # once

"""The whole SMS loop on real RabbitMQ and Redis: job → worker → Twilio API (the stand-in,
through the real twilio client) → signed status callbacks → webhook server → outbox.events →
worker → status event."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from outbox.devsinks.twilio_api import TwilioStandIn
from tests.integration.helpers import collect, events, publish, running_app, running_worker

pytestmark = pytest.mark.integration
SID, TOKEN, FROM = "AC" + "3" * 32, "loop-token", "+15005550006"


def sms_job(job_id: str, to: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": job_id, "account_id": "acct_sms", "channel": "sms",
            "category": "notification", "topic": "appointment", "to": to,
            "body": "Your appointment is at 10:00 tomorrow", **fields}


@pytest.fixture
async def loop_settings(make_settings, unused_tcp_port):
    api = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=0.02)
    base = await api.start()
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(twilio_account_sid=SID, twilio_auth_token=TOKEN,
                             twilio_from=FROM, twilio_api_base=base, public_url=public,
                             twilio_rate_per_sender=50.0)
    async with running_app(settings, unused_tcp_port):
        yield settings, api
    await api.close()


def _by_id(messages: list) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = collections.defaultdict(list)
    for e in events(messages):
        seen[e["id"]].append(e["status"])
    return seen


async def test_delivered_bounced_and_stop_through_the_whole_loop(loop_settings, amqp_url):
    settings, api = loop_settings
    jobs = [sms_job(i, to, metadata={"crm_message_id": n, "ref": i})
            for n, (i, to) in enumerate([("sms-ok", "+85291230001"),
                                         ("sms-gone", "+85291230005"),
                                         ("sms-stop", "+15005550004")])]
    async with running_worker(settings):
        await publish(amqp_url, jobs)
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 5)
        statuses = _by_id(got)
        assert statuses["sms-ok"] == ["sent", "delivered"]
        assert statuses["sms-gone"] == ["sent", "bounced"]
        assert statuses["sms-stop"] == ["unsubscribed"]  # Twilio 21610 at create
        # the provider's events (Twilio's signed callbacks) carry the job's metadata too
        metadata = {j["id"]: j["metadata"] for j in jobs}
        assert all(e["metadata"] == metadata[e["id"]] for e in events(got))

        # later jobs to those numbers are refused before any request
        requests_before = len(api.requests)
        await publish(amqp_url, [sms_job("sms-gone-2", "+85291230005"),
                                 sms_job("sms-stop-2", "+15005550004")])
        later = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2))
    assert {(e["id"], e["status"], e["reason"]) for e in later} == {
        ("sms-gone-2", "suppressed", "hard_bounce"), ("sms-stop-2", "suppressed", "sms_stop")}
    assert len(api.requests) == requests_before
    sent = [e for e in events(got) if e["status"] == "sent"]
    assert all(e["provider"] == "twilio" and e["segments"] == 1 for e in sent)


async def test_a_429_storm_slows_sending_without_losing_a_job(loop_settings, amqp_url):
    settings, api = loop_settings
    api.rate_limit(5)  # Twilio answers 429 / 20429 above 5 creates a second
    jobs = [sms_job(f"storm-{i}", f"+852912300{i % 10}{i // 10}") for i in range(30)]
    async with running_worker(settings) as worker:
        await publish(amqp_url, jobs)
        got = await collect(amqp_url, "outbox.status",
                            lambda m: sum(1 for e in events(m) if e["status"] == "sent") >= 30,
                            timeout=90)
        lowest = worker.channels["sms"]._limiter.lowest
    statuses = _by_id(got)
    assert {j["id"] for j in jobs} <= {i for i, s in statuses.items() if "sent" in s}
    deferred = [e for e in events(got) if e["status"] == "deferred"]
    assert deferred and {e["reason"] for e in deferred} == {"speeding"}
    assert len(api.requests) > 30, "the stand-in refused some creates with 429"
    assert len(api.messages) == 30, "every job created exactly once at Twilio"
    assert lowest < 50.0 / 4, "the sender's rate was cut by the 429s"


async def test_marketing_sms_carries_sender_and_opt_out_and_counts_segments(
        loop_settings, amqp_url, monkeypatch, redis_url):
    from prometheus_client import generate_latest

    from tests.integration.helpers import cli_runner

    settings, api = loop_settings
    cli = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await cli("accounts", "configure", "acct_sms", "--business-name", "Acme",
                     "--address", "Central, HK", "--contact-phone", "+852 2123 4567") == 0
    assert await cli("consent", "grant", "acct_sms", "+85291230001", "--channel", "sms") == 0
    async with running_worker(settings) as worker:
        await publish(amqp_url, [sms_job("mk-1", "+85291230001", category="marketing",
                                         topic=None, body="Spring sale 春季大減價")])
        [event] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
        text = generate_latest(worker.metrics.registry).decode()
    body = api.messages[-1]["body"]
    assert body.startswith("Spring sale 春季大減價\nAcme +852 2123 4567")
    assert body.endswith("Reply STOP to unsubscribe. 回覆STOP取消訂閱。")
    assert (event["status"], event["encoding"], event["segments"]) == ("sent", "UCS-2", 2)
    assert 'outbox_sms_segments_total{encoding="UCS-2"} 2.0' in text

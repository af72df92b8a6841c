"""The worker end to end on real RabbitMQ, Redis and an SMTP server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default

import pytest

from sender.client import Outbox
from sender.models import InvalidJob
from tests.integration.helpers import collect, email_job, events, publish, running_worker

pytestmark = pytest.mark.integration


async def test_jobs_are_sent_once_each_with_a_sent_event(make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    jobs = [email_job() for _ in range(50)]
    async with Outbox(amqp_url) as outbox:
        for job in jobs:
            await outbox.enqueue(job)
    async with running_worker(settings):
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 50)
    sent = events(got)
    assert sorted(e["id"] for e in sent) == sorted(j["id"] for j in jobs)
    assert {e["status"] for e in sent} == {"sent"}
    assert {m.routing_key for m in got} == {"email.sent"}
    assert len(recorder.messages) == 50
    first = message_from_bytes(recorder.by_rcpt(jobs[0]["to"])[0], policy=default)
    assert first["Message-ID"] == f"<{jobs[0]['id']}@outbox.localhost>"
    assert first["Subject"] == jobs[0]["subject"]
    assert sent[0]["provider"] == "smtp" and sent[0]["provider_message_id"].startswith("Q")


async def test_client_refuses_an_invalid_job_before_publishing(amqp_url):
    async with Outbox(amqp_url) as outbox:
        with pytest.raises(InvalidJob, match="subject"):
            await outbox.enqueue(email_job(subject=None))


async def test_malformed_jobs_go_to_dead_letters_with_a_reason(make_settings, smtp_server,
                                                                amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    good = email_job()
    bad: list[bytes] = [
        b"this is not json",
        json.dumps({"v": 1, "id": "missing-1", "account_id": "a", "channel": "email"}).encode(),
        json.dumps(email_job(id="wrongtype-1", subject=42)).encode(),
        json.dumps(email_job(id="huge-1", text="x" * (10 * 1024 * 1024))).encode(),
        json.dumps(email_job(id="fax-1", channel="fax")).encode(),
        b"[1, 2, 3]",
    ]
    await publish(amqp_url, [*bad, good], routing_key="email")
    async with running_worker(settings):
        dead = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= len(bad))
        status = await collect(amqp_url, "outbox.status",
                               lambda m: any(json.loads(x.body)["status"] == "sent" for x in m)
                               and len(m) >= 5)
    reasons = [m.headers["x-outbox-reason"] for m in dead]
    assert len(dead) == len(bad)
    assert reasons[0].startswith("not valid JSON")
    assert "subject" in reasons[1] and "Field required" in reasons[1]
    assert reasons[2].startswith("subject: Input should be a valid string")
    assert "over the limit" in reasons[3]
    assert reasons[4] == "channel must be 'email' or 'sms'"
    assert "object" in reasons[5]
    assert [m.body for m in dead] == bad  # the original body is kept, untouched
    by_id = {e["id"]: e for e in events(status)}
    assert {k: by_id[k]["status"] for k in ("missing-1", "wrongtype-1", "huge-1", "fax-1")} == \
        dict.fromkeys(("missing-1", "wrongtype-1", "huge-1", "fax-1"), "rejected")
    assert by_id[good["id"]]["status"] == "sent"  # the worker went on
    assert len(recorder.messages) == 1


async def test_a_republished_job_id_is_not_sent_twice(make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    job = email_job()
    await publish(amqp_url, [job])
    async with running_worker(settings):
        await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
        await publish(amqp_url, [job, job])
        again = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2, timeout=10)
    assert len(recorder.messages) == 1
    # the redeliveries re-announce the recorded final status, they do not send
    assert [e["status"] for e in events(again)] == ["sent", "sent"]
    assert {e["detail"] for e in events(again)} == {"redelivered"}


async def test_a_job_past_not_after_is_expired_not_sent(make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    job = email_job(not_after=past)
    await publish(amqp_url, [job])
    async with running_worker(settings):
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
    assert events(got)[0]["status"] == "expired"
    assert got[0].routing_key == "email.expired"
    assert recorder.messages == []


async def test_temporary_failure_is_retried_then_sent(make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, retry_tiers=(1,))
    job = email_job(to="busy@example.com")
    recorder.replies["busy@example.com"] = "452 4.2.2 Mailbox full, try later"
    await publish(amqp_url, [job])
    async with running_worker(settings):
        first = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
        del recorder.replies["busy@example.com"]
        second = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=15)
    deferred, sent = events(first)[0], events(second)[0]
    assert (deferred["status"], deferred["attempt"]) == ("deferred", 1)
    assert deferred["reason"] == "mailboxfull"
    assert (sent["status"], sent["attempt"]) == ("sent", 2)
    assert len(recorder.messages) == 1


async def test_permanent_failure_is_bounced(make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    job = email_job(to="nobody@example.com")
    recorder.replies["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: User unknown"
    await publish(amqp_url, [job])
    async with running_worker(settings):
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
    event = events(got)[0]
    assert (event["status"], event["reason"]) == ("bounced", "userunknown")
    assert event["detail"].startswith("550 5.1.1")
    assert recorder.messages == []


async def test_retries_give_up_with_failed_after_max_attempts(make_settings, smtp_server,
                                                               amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, retry_tiers=(1,), retry_max_attempts=2)
    job = email_job(to="later@example.com")
    recorder.replies["later@example.com"] = "451 4.3.0 Temporary server error"
    await publish(amqp_url, [job])
    async with running_worker(settings):
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2, timeout=15)
    assert [(e["status"], e["attempt"]) for e in events(got)] == [("deferred", 1), ("failed", 2)]


async def test_worker_reports_queue_depths_and_job_counts(make_settings, smtp_server,
                                                          amqp_url):
    from prometheus_client import generate_latest

    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    await publish(amqp_url, [b"not json"], routing_key="email")
    async with running_worker(settings) as worker:
        await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
        await publish(amqp_url, [email_job()])
        await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
        await worker.gauges.queue_depths()
        text = generate_latest(worker.metrics.registry).decode()
    assert 'outbox_queue_depth{queue="outbox.email"} 0.0' in text
    assert 'outbox_queue_depth{queue="outbox.retry.1"} 0.0' in text
    assert 'outbox_jobs_total{channel="email",status="sent"} 1.0' in text
    assert 'outbox_jobs_total{channel="email",status="rejected"} 1.0' in text


async def test_a_policy_block_is_retried_and_never_suppresses_the_recipient(
        make_settings, smtp_server, amqp_url):
    from prometheus_client import generate_latest

    from suppression.store import SuppressionStore

    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, retry_tiers=(1,))
    job = email_job(to="strict@example.com")
    recorder.replies["strict@example.com"] = \
        "550 5.7.1 Service unavailable; client host blocked using Spamhaus"
    await publish(amqp_url, [job])
    async with running_worker(settings) as worker:
        first = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
        entries = await SuppressionStore(worker.redis).check("strict@example.com")
        del recorder.replies["strict@example.com"]
        second = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=15)
        text = generate_latest(worker.metrics.registry).decode()
    assert (events(first)[0]["status"], events(first)[0]["reason"]) == ("deferred", "blocked")
    assert entries == []
    assert events(second)[0]["status"] == "sent"
    assert 'outbox_provider_replies_total{kind="block",provider="smtp"} 1.0' in text


async def test_an_unroutable_publish_is_an_error_not_a_silent_drop(amqp_url):
    from sender.bus import Bus, PublishFailed

    bus = Bus(amqp_url, retry_tiers=(1,))
    await bus.connect()
    try:
        with pytest.raises(PublishFailed, match="NO_ROUTE|unroutable|312"):
            await bus.publish("outbox.jobs", "fax", b"{}")
        await bus.publish("outbox.jobs", "email", b"{}")  # the channel is still usable
    finally:
        await bus.close()
